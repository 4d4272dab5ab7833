"""The movie impressions job's rules, pure apart from `outputs`; dataflows/movie_impressions.py wires them."""

JOB = "movie_impressions"  # the job's name: its metrics label, its lines' prefix, its Delta app id
