//! The impressions step's first decode tier (dataflows/impressions/decode.py, `_layout_rows`):
//! the records in one of the producers' exact JSON layouts, proven and cut in one pass over
//! their bytes. The rules are `_Layout.pattern`'s and the cut's, byte for byte; the Python side
//! passes the layouts and the limits, and its polars path stays the reference (and the fallback).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule, PyList};

use crate::arrow::{ArrowArray, ArrowSchema, Builder, Column};

#[repr(C)]
struct ArrowArrayStream {
    get_schema: Option<unsafe extern "C" fn(*mut ArrowArrayStream, *mut ArrowSchema) -> c_int>,
    get_next: Option<unsafe extern "C" fn(*mut ArrowArrayStream, *mut ArrowArray) -> c_int>,
    get_last_error: Option<unsafe extern "C" fn(*mut ArrowArrayStream) -> *const c_char>,
    release: Option<unsafe extern "C" fn(*mut ArrowArrayStream)>,
    private_data: *mut c_void,
}

/// A producer's layout: `head` <movieId> `middle` <userId> `tail` <digits> `}`.
struct Layout {
    head: Vec<u8>,
    middle: Vec<u8>,
    tail: Vec<u8>,
}

struct Rules {
    layouts: Vec<Layout>,
    max_id_bytes: usize,
    min_ts: i64,
    max_ts: i64,
}

struct Rows {
    rows: Vec<i64>,
    movies: Builder,
    users: Builder,
    ts: Vec<i64>,
}

impl Rules {
    /// (movieId, userId, timestamp) of a record in one of the layouts whose fields are accepted as
    /// they are, else None.
    fn cut<'a>(&self, value: &'a [u8]) -> Option<(&'a [u8], &'a [u8], i64)> {
        std::str::from_utf8(value).ok()?;
        self.layouts.iter().find_map(|layout| self.cut_as(layout, value))
    }

    fn cut_as<'a>(&self, layout: &Layout, value: &'a [u8]) -> Option<(&'a [u8], &'a [u8], i64)> {
        let rest = value.strip_prefix(layout.head.as_slice())?;
        let (movie, rest) = self.id(rest)?;
        let rest = rest.strip_prefix(layout.middle.as_slice())?;
        let (user, rest) = self.id(rest)?;
        let rest = rest.strip_prefix(layout.tail.as_slice())?;
        let (digits, brace) = rest.split_at_checked(rest.len().checked_sub(1)?)?;
        // [1-9][0-9]{0,17}: at most 18 digits, no leading zero, so it fits an i64.
        if brace != b"}" || digits.is_empty() || digits.len() > 18 || digits[0] == b'0' {
            return None;
        }
        let mut ts: i64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            ts = ts * 10 + i64::from(d - b'0');
        }
        (self.min_ts <= ts && ts < self.max_ts).then_some((movie, user, ts))
    }

    /// An id up to the first quote (the layouts' next piece starts with one): no backslash, C0,
    /// DEL or C1 control (U+0080-U+009F, 0xC2 0x80-0x9F in UTF-8), an ASCII letter or digit,
    /// at most `max_id_bytes`. `text` is valid UTF-8, so a 0xC2 is a lead byte.
    fn id<'a>(&self, text: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let mut alnum = false;
        for (i, &b) in text.iter().enumerate() {
            match b {
                b'"' => return (alnum && i <= self.max_id_bytes).then(|| text.split_at(i)),
                b'\\' | 0x00..=0x1f | 0x7f => return None,
                0xc2 if matches!(text.get(i + 1), Some(0x80..=0x9f)) => return None,
                _ => alnum |= b.is_ascii_alphanumeric(),
            }
        }
        None
    }

    fn take(&self, rows: &mut Rows, row: usize, value: &[u8]) {
        if let Some((movie, user, ts)) = self.cut(value) {
            rows.rows.push(row as i64);
            // SAFETY: slices of a value proven UTF-8, cut at ASCII quotes.
            unsafe {
                rows.movies.push(movie.as_ptr(), movie.len());
                rows.users.push(user.as_ptr(), user.len());
            }
            rows.ts.push(ts);
        }
    }
}

/// The records of `values` (a list of bytes or None, or anything with `__arrow_c_stream__` of
/// Arrow binary: a polars Binary Series) in one of `layouts` ((head, middle, tail) as bytes) whose
/// fields are accepted as they are: (row indices as int64 bytes, movieIds and userIds as utf8
/// columns, timestamps as int64 bytes), in row order.
/// The acceptance rules this file hard-codes (dataflows/impressions/decode.py: `NATIVE_RULES`);
/// a change to either side's rules bumps both, so an extension built before is not used.
pub const RULES: u32 = 1;

#[pyfunction]
pub fn layout_rows<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    layouts: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    max_id_bytes: usize,
    min_timestamp_ms: i64,
    max_timestamp_ms: i64,
) -> PyResult<(Bound<'py, PyBytes>, Column, Column, Bound<'py, PyBytes>)> {
    let layouts = layouts.into_iter().map(|(head, middle, tail)| Layout { head, middle, tail }).collect();
    let rules = Rules { layouts, max_id_bytes, min_ts: min_timestamp_ms, max_ts: max_timestamp_ms };
    let capacity = values.len().unwrap_or(0);
    let mut rows = Rows {
        rows: Vec::with_capacity(capacity),
        movies: Builder::with_capacity(capacity, 0),
        users: Builder::with_capacity(capacity, 0),
        ts: Vec::with_capacity(capacity),
    };
    if let Ok(list) = values.cast::<PyList>() {
        for (row, item) in list.iter().enumerate() {
            if item.is_none() {
                continue;
            }
            let bytes = item.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("values must be bytes or None"))?;
            rules.take(&mut rows, row, bytes.as_bytes());
        }
    } else {
        let capsule = values.call_method0("__arrow_c_stream__")?;
        let capsule = capsule.cast::<PyCapsule>()?;
        let stream = capsule.pointer_checked(Some(c"arrow_array_stream"))?.as_ptr().cast::<ArrowArrayStream>();
        // SAFETY: the capsule holds a live stream until it is dropped (its destructor releases it).
        unsafe { read_stream(stream, &rules, &mut rows)? };
    }
    Ok((
        PyBytes::new(py, as_bytes(&rows.rows)),
        rows.movies.finish_utf8(),
        rows.users.finish_utf8(),
        PyBytes::new(py, as_bytes(&rows.ts)),
    ))
}

fn as_bytes(values: &[i64]) -> &[u8] {
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

unsafe fn stream_error(stream: *mut ArrowArrayStream, code: c_int) -> PyErr {
    let reason = match (*stream).get_last_error.map(|f| f(stream)) {
        Some(text) if !text.is_null() => CStr::from_ptr(text).to_string_lossy().into_owned(),
        _ => format!("error {code}"),
    };
    PyValueError::new_err(format!("reading the Arrow stream: {reason}"))
}

/// Each array of the stream, its records numbered on from the previous arrays'.
unsafe fn read_stream(stream: *mut ArrowArrayStream, rules: &Rules, rows: &mut Rows) -> PyResult<()> {
    let (Some(get_schema), Some(get_next)) = ((*stream).get_schema, (*stream).get_next) else {
        return Err(PyValueError::new_err("the Arrow stream is released"));
    };
    let mut schema: ArrowSchema = std::mem::zeroed();
    let code = get_schema(stream, &mut schema);
    if code != 0 {
        return Err(stream_error(stream, code));
    }
    let format = CStr::from_ptr(schema.format).to_bytes().to_vec();
    if let Some(release) = schema.release {
        release(&mut schema);
    }
    let mut first_row = 0usize;
    loop {
        let mut array: ArrowArray = std::mem::zeroed();
        let code = get_next(stream, &mut array);
        if code != 0 {
            return Err(stream_error(stream, code));
        }
        let Some(release) = array.release else { return Ok(()) }; // the end of the stream
        let result = read_array(&array, &format, first_row, rules, rows);
        first_row += array.length as usize;
        release(&mut array);
        result?;
    }
}

/// One Arrow array of binary or text: views ("vz", "vu"), or 32/64-bit offsets ("z", "u", "Z", "U").
unsafe fn read_array(array: &ArrowArray, format: &[u8], first_row: usize, rules: &Rules, rows: &mut Rows) -> PyResult<()> {
    let buffers = std::slice::from_raw_parts(array.buffers, array.n_buffers as usize);
    let (length, offset) = (array.length as usize, array.offset as usize);
    let validity = buffers.first().copied().unwrap_or(ptr::null()).cast::<u8>();
    let valid = |i: usize| validity.is_null() || (*validity.add(i / 8) >> (i % 8)) & 1 == 1;
    match format {
        b"vz" | b"vu" if buffers.len() >= 3 => {
            let views = buffers[1].cast::<[u8; 16]>();
            for i in 0..length {
                if !valid(offset + i) {
                    continue;
                }
                let view = ptr::read_unaligned(views.add(offset + i));
                let len = u32::from_le_bytes(view[..4].try_into().unwrap()) as usize;
                let value = if len <= 12 {
                    std::slice::from_raw_parts(views.add(offset + i).cast::<u8>().add(4), len)
                } else {
                    let index = u32::from_le_bytes(view[8..12].try_into().unwrap()) as usize;
                    let start = u32::from_le_bytes(view[12..16].try_into().unwrap()) as usize;
                    // [validity, views, data 0..n, sizes of the n data buffers]
                    let sizes = buffers[buffers.len() - 1].cast::<i64>();
                    if index + 3 >= buffers.len() || start + len > ptr::read_unaligned(sizes.add(index)) as usize {
                        return Err(PyValueError::new_err("an Arrow view names bytes its array lacks"));
                    }
                    bytes_at(buffers[2 + index].cast::<u8>(), start, len)
                };
                rules.take(rows, first_row + i, value);
            }
        }
        b"z" | b"u" if buffers.len() == 3 => read_offsets::<i32>(buffers, length, offset, first_row, &valid, rules, rows),
        b"Z" | b"U" if buffers.len() == 3 => read_offsets::<i64>(buffers, length, offset, first_row, &valid, rules, rows),
        _ => {
            let format = String::from_utf8_lossy(format);
            return Err(PyTypeError::new_err(format!("values must be Arrow binary, not format {format:?}")));
        }
    }
    Ok(())
}

unsafe fn read_offsets<O: Copy + TryInto<usize>>(
    buffers: &[*const c_void],
    length: usize,
    offset: usize,
    first_row: usize,
    valid: &dyn Fn(usize) -> bool,
    rules: &Rules,
    rows: &mut Rows,
) {
    let offsets = buffers[1].cast::<O>();
    let data = buffers[2].cast::<u8>();
    let at = |i: usize| ptr::read_unaligned(offsets.add(i)).try_into().unwrap_or(0);
    for i in 0..length {
        if valid(offset + i) {
            let (start, end) = (at(offset + i), at(offset + i + 1));
            rules.take(rows, first_row + i, bytes_at(data, start, end.saturating_sub(start)));
        }
    }
}

/// `len` bytes from `start` of `data`; none for an empty value (its buffer may be null).
unsafe fn bytes_at<'a>(data: *const u8, start: usize, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(data.add(start), len)
    }
}
