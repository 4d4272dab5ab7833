"""Kinesis Data Streams as a job's transport.

| module         | holds                                                                  |
|----------------|------------------------------------------------------------------------|
| `transport.py` | KinesisTransport: the jobs' contract (contract.py) over Kinesis        |
| `settings.py`  | KinesisSettings from the environment                                   |
| `proxy.py`     | the Kinesis calls the source makes, one seam, and their boto3 version  |
| `tracker.py`   | which shards to read, and from where: pure, no I/O                     |
| `reader.py`    | one stream's reader: proxy + tracker, backoff, iterators, retention   |
| `source.py`    | StatefulKinesisSource, the bytewax source: one partition per stream    |
| `record.py`    | KinesisRecord, one record of a page; a page's records as a RecordBatch |
| `sink.py`      | KinesisSink, each record once across crashes                           |
| `records.py`   | what the sink puts on the wire, and how it cuts PutRecords calls: pure |
| `readback.py`  | reading an output stream back, to settle what landed                   |
"""
