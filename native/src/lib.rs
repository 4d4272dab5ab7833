//! One assigned Kafka partition read with librdkafka's `rd_kafka_consume_batch_queue`, the GIL
//! released, handed to Python as whole columns. The Python side is
//! connectors/transports/kafka_native.py; nothing here is used directly by the jobs.

mod arrow;
mod ffi;
mod layouts;

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use arrow::{Builder, Column};
use ffi::{lib, text, Lib, Message};

create_exception!(waxstreams_native, ConfigError, PyValueError, "librdkafka refused a property: (name, reason).");
create_exception!(waxstreams_native, KafkaError, PyRuntimeError, "A librdkafka call failed: (code, name, reason).");

const ERRSTR: usize = 512;
const MAX_BATCH: usize = 1 << 20;

/// The Python callables librdkafka's callbacks call, with the GIL taken.
struct Callbacks {
    error: Option<Py<PyAny>>,   // error(code, reason)
    log: Option<Py<PyAny>>,     // log(syslog level, facility, client name, message)
    token: Option<Py<PyAny>>,   // token(sasl.oauthbearer.config) -> (token, expiry epoch s[, principal[, extensions]])
}

/// librdkafka handles: thread-safe in librdkafka, used by one reader at a time.
struct Handles {
    rk: *mut ffi::Client,
    queue: *mut ffi::Queue,
    batch: Vec<*mut Message>, // consumed, not yet handed over (what follows an end of partition)
    next: usize,
}

unsafe impl Send for Handles {}
unsafe impl Sync for Handles {}

struct Read {
    values: Builder,
    keys: Builder,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    reached_end: bool,
    errors: Vec<(c_int, String)>,
}

#[pyclass(module = "waxstreams_native")]
struct PartitionReader {
    handles: Option<Handles>,
    callbacks: *mut Callbacks, // librdkafka's opaque; freed after the client
    topic: CString,
    partition: i32,
}

unsafe impl Send for PartitionReader {}
unsafe impl Sync for PartitionReader {}

fn errstr_buf() -> Vec<u8> {
    vec![0u8; ERRSTR]
}

fn c_string(what: &str, value: &str) -> PyResult<CString> {
    CString::new(value).map_err(|_| PyValueError::new_err(format!("{what} holds a NUL byte")))
}

fn kafka_error(lib: &Lib, code: c_int, context: &str) -> PyErr {
    let (name, reason) = ffi::describe(lib, code);
    KafkaError::new_err((code, name, format!("{context}: {reason}")))
}

fn runtime(reason: String) -> PyErr {
    PyRuntimeError::new_err(reason)
}

#[pymethods]
impl PartitionReader {
    #[new]
    #[pyo3(signature = (properties, topic, partition, start_offset, error_cb=None, log_cb=None, token_cb=None))]
    fn new(
        py: Python<'_>,
        properties: Vec<(String, String)>,
        topic: &str,
        partition: i32,
        start_offset: i64,
        error_cb: Option<Py<PyAny>>,
        log_cb: Option<Py<PyAny>>,
        token_cb: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let lib = lib().map_err(runtime)?;
        let topic = c_string("the topic", topic)?;
        let mut errstr = errstr_buf();
        let conf = unsafe { (lib.rd_kafka_conf_new)() };
        let set = |name: &str, value: &str, errstr: &mut Vec<u8>| -> PyResult<()> {
            let (c_name, c_value) = (c_string(name, name)?, c_string(name, value)?);
            let res = unsafe {
                (lib.rd_kafka_conf_set)(conf, c_name.as_ptr(), c_value.as_ptr(), errstr.as_mut_ptr().cast(), ERRSTR)
            };
            if res != ffi::CONF_OK {
                return Err(ConfigError::new_err((name.to_string(), text(errstr.as_ptr().cast()))));
            }
            Ok(())
        };
        let mut configure = || -> PyResult<()> {
            for (name, value) in &properties {
                set(name, value, &mut errstr)?;
            }
            if log_cb.is_some() {
                set("log.queue", "true", &mut errstr)?; // logs served by our reads, on our thread
            }
            Ok(())
        };
        if let Err(err) = configure() {
            unsafe { (lib.rd_kafka_conf_destroy)(conf) };
            return Err(err);
        }
        let has_log = log_cb.is_some();
        let has_token = token_cb.is_some();
        let callbacks = Box::into_raw(Box::new(Callbacks { error: error_cb, log: log_cb, token: token_cb }));
        unsafe {
            (lib.rd_kafka_conf_set_opaque)(conf, callbacks.cast());
            if (*callbacks).error.is_some() {
                (lib.rd_kafka_conf_set_error_cb)(conf, Some(on_error));
            }
            if has_log {
                (lib.rd_kafka_conf_set_log_cb)(conf, Some(on_log));
            }
            if has_token {
                // Refreshed on librdkafka's background thread: a token never waits for a read.
                (lib.rd_kafka_conf_set_oauthbearer_token_refresh_cb)(conf, Some(on_token_refresh));
                (lib.rd_kafka_conf_enable_sasl_queue)(conf, 1);
            }
        }
        let conf_addr = conf as usize;
        let errstr_addr = errstr.as_mut_ptr() as usize;
        let rk = py.detach(move || unsafe {
            (lib.rd_kafka_new)(ffi::CONSUMER, conf_addr as *mut ffi::Conf, errstr_addr as *mut c_char, ERRSTR) as usize
        }) as *mut ffi::Client;
        if rk.is_null() {
            unsafe {
                (lib.rd_kafka_conf_destroy)(conf);
                drop(Box::from_raw(callbacks));
            }
            return Err(ConfigError::new_err((String::new(), text(errstr.as_ptr().cast()))));
        }
        let mut reader =
            PartitionReader { handles: Some(Handles { rk, queue: ptr::null_mut(), batch: Vec::new(), next: 0 }), callbacks, topic, partition };
        reader.start(py, lib, has_log, has_token, start_offset)?; // on error, Drop closes the client
        Ok(reader)
    }

    /// Up to `max_messages` from the partition, waiting up to `timeout_s` for the first:
    /// (values, keys, offsets as int64 bytes, timestamps in ms as int64 bytes, reached_end, errors).
    /// `reached_end`: the partition's end was reached after the last of these (enable.partition.eof).
    fn read<'py>(&mut self, py: Python<'py>, max_messages: usize, timeout_s: f64) -> PyResult<Bound<'py, PyTuple>> {
        let lib = lib().map_err(runtime)?;
        let handles = self.handles.as_mut().ok_or_else(|| runtime("the reader is closed".into()))?;
        let max = max_messages.clamp(1, MAX_BATCH);
        let timeout_ms = (timeout_s * 1000.0).ceil().clamp(0.0, i32::MAX as f64) as c_int;
        let read = py.detach(|| unsafe { handles.read(lib, max, timeout_ms) })?;
        let errors: Vec<(c_int, String, String)> =
            read.errors.into_iter().map(|(code, reason)| (code, ffi::describe(lib, code).0, reason)).collect();
        (
            read.values.finish(),
            read.keys.finish(),
            PyBytes::new(py, as_bytes(&read.offsets)),
            PyBytes::new(py, as_bytes(&read.timestamps)),
            read.reached_end,
            errors,
        )
            .into_pyobject(py)
    }

    /// Commits `offset` (the next to read) for this partition, for lag tools.
    fn commit(&self, py: Python<'_>, offset: i64, asynchronous: bool) -> PyResult<()> {
        let lib = lib().map_err(runtime)?;
        let handles = self.handles.as_ref().ok_or_else(|| runtime("the reader is closed".into()))?;
        let code = py.detach(|| unsafe {
            let list = self.partition_list(lib, offset);
            let code = (lib.rd_kafka_commit)(handles.rk, list, asynchronous as c_int);
            (lib.rd_kafka_topic_partition_list_destroy)(list);
            code
        });
        if code != 0 && !(asynchronous && code == ffi::ERR_NO_OFFSET) {
            return Err(kafka_error(lib, code, "commit"));
        }
        Ok(())
    }

    /// (low, high) watermarks of the partition as the last fetch response gave them: librdkafka's
    /// cached values, no broker round trip; -1001 (OFFSET_INVALID) until the first response.
    fn watermarks(&self) -> PyResult<(i64, i64)> {
        let lib = lib().map_err(runtime)?;
        let handles = self.handles.as_ref().ok_or_else(|| runtime("the reader is closed".into()))?;
        let (mut low, mut high) = (ffi::OFFSET_INVALID, ffi::OFFSET_INVALID);
        let code = unsafe {
            (lib.rd_kafka_get_watermark_offsets)(handles.rk, self.topic.as_ptr(), self.partition, &mut low, &mut high)
        };
        if code != 0 {
            return Err(kafka_error(lib, code, "get_watermark_offsets"));
        }
        Ok((low, high))
    }

    /// Leaves the partition and destroys the client (waits for librdkafka's threads).
    fn close(&mut self, py: Python<'_>) {
        if let Some(handles) = self.handles.take() {
            py.detach(|| unsafe { handles.destroy() });
        }
        if !self.callbacks.is_null() {
            unsafe { drop(Box::from_raw(self.callbacks)) };
            self.callbacks = ptr::null_mut();
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.handles.is_none()
    }
}

impl PartitionReader {
    fn start(&mut self, py: Python<'_>, lib: &'static Lib, has_log: bool, has_token: bool, start: i64) -> PyResult<()> {
        let handles = self.handles.as_mut().expect("just made");
        let rk = handles.rk;
        unsafe {
            if has_token {
                let error = (lib.rd_kafka_sasl_background_callbacks_enable)(rk);
                if !error.is_null() {
                    let reason = text((lib.rd_kafka_error_string)(error));
                    (lib.rd_kafka_error_destroy)(error);
                    return Err(runtime(format!("token refresh on librdkafka's background thread: {reason}")));
                }
            }
            if has_log {
                (lib.rd_kafka_set_log_queue)(rk, ptr::null_mut()); // the main queue, served by our reads
            }
            let code = (lib.rd_kafka_poll_set_consumer)(rk);
            if code != 0 {
                return Err(kafka_error(lib, code, "poll_set_consumer"));
            }
            handles.queue = (lib.rd_kafka_queue_get_consumer)(rk);
        }
        let list = unsafe { self.partition_list(lib, start) };
        let rk_addr = rk as usize;
        let list_addr = list as usize;
        let code = py.detach(move || unsafe {
            let code = (lib.rd_kafka_assign)(rk_addr as *mut ffi::Client, list_addr as *const ffi::TopicPartitionList);
            (lib.rd_kafka_topic_partition_list_destroy)(list_addr as *mut ffi::TopicPartitionList);
            code
        });
        if code != 0 {
            return Err(kafka_error(lib, code, "assign"));
        }
        Ok(())
    }

    unsafe fn partition_list(&self, lib: &Lib, offset: i64) -> *mut ffi::TopicPartitionList {
        let list = (lib.rd_kafka_topic_partition_list_new)(1);
        let entry = (lib.rd_kafka_topic_partition_list_add)(list, self.topic.as_ptr(), self.partition);
        (*entry).offset = offset;
        list
    }
}

impl Drop for PartitionReader {
    fn drop(&mut self) {
        if self.handles.is_some() || !self.callbacks.is_null() {
            Python::attach(|py| self.close(py));
        }
    }
}

impl Handles {
    unsafe fn read(&mut self, lib: &Lib, max: usize, timeout_ms: c_int) -> PyResult<Read> {
        if self.next >= self.batch.len() {
            self.batch.clear();
            self.next = 0;
            self.batch.reserve(max);
            let n = (lib.rd_kafka_consume_batch_queue)(self.queue, timeout_ms, self.batch.as_mut_ptr(), max);
            if n < 0 {
                return Err(runtime(format!("rd_kafka_consume_batch_queue failed ({n})")));
            }
            self.batch.set_len(n as usize);
        }
        let pending = &self.batch[self.next..];
        let take = pending.len().min(max);
        let (mut bytes, mut key_bytes) = (0usize, 0usize);
        for &m in &pending[..take] {
            if (*m).err == 0 {
                bytes += if Builder::is_long((*m).len) { (*m).len } else { 0 };
                key_bytes += if Builder::is_long((*m).key_len) { (*m).key_len } else { 0 };
            }
        }
        let mut read = Read {
            values: Builder::with_capacity(take, bytes),
            keys: Builder::with_capacity(take, key_bytes),
            offsets: Vec::with_capacity(take),
            timestamps: Vec::with_capacity(take),
            reached_end: false,
            errors: Vec::new(),
        };
        let mut used = 0;
        for &m in &pending[..take] {
            used += 1;
            let msg = &*m;
            match msg.err {
                0 => {
                    read.values.push(msg.payload.cast(), msg.len);
                    read.keys.push(msg.key.cast(), msg.key_len);
                    read.offsets.push(msg.offset);
                    let mut kind: c_int = 0;
                    read.timestamps.push((lib.rd_kafka_message_timestamp)(m, &mut kind));
                }
                ffi::ERR_PARTITION_EOF => read.reached_end = true,
                code => {
                    let reason = if msg.payload.is_null() {
                        String::new()
                    } else {
                        String::from_utf8_lossy(std::slice::from_raw_parts(msg.payload.cast::<u8>(), msg.len)).into_owned()
                    };
                    read.errors.push((code, reason));
                }
            }
            (lib.rd_kafka_message_destroy)(m);
            if read.reached_end {
                break; // what follows is handed over by the next read
            }
        }
        self.next += used;
        Ok(read)
    }

    unsafe fn destroy(mut self) {
        let Ok(lib) = lib() else { return };
        for &m in &self.batch[self.next..] {
            (lib.rd_kafka_message_destroy)(m);
        }
        self.batch.clear();
        if !self.queue.is_null() {
            (lib.rd_kafka_queue_destroy)(self.queue);
        }
        (lib.rd_kafka_consumer_close)(self.rk);
        (lib.rd_kafka_destroy)(self.rk);
    }
}

fn as_bytes(values: &[i64]) -> &[u8] {
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values)) }
}

// -- callbacks: called by librdkafka (our reads, or its background thread), the GIL taken --

unsafe fn callbacks<'a>(opaque: *mut c_void) -> Option<&'a Callbacks> {
    opaque.cast::<Callbacks>().as_ref()
}

fn report(py: Python<'_>, result: PyResult<Bound<'_, PyAny>>) {
    if let Err(err) = result {
        err.write_unraisable(py, None);
    }
}

unsafe extern "C" fn on_error(_rk: *mut ffi::Client, code: c_int, reason: *const c_char, opaque: *mut c_void) {
    let Some(cb) = callbacks(opaque).and_then(|c| c.error.as_ref()) else { return };
    let reason = text(reason);
    Python::attach(|py| report(py, cb.call1(py, (code, reason)).map(|r| r.into_bound(py))));
}

unsafe extern "C" fn on_log(rk: *const ffi::Client, level: c_int, facility: *const c_char, message: *const c_char) {
    let Ok(lib) = lib() else { return };
    let Some(cb) = callbacks((lib.rd_kafka_opaque)(rk)).and_then(|c| c.log.as_ref()) else { return };
    let (facility, name, message) = (text(facility), text((lib.rd_kafka_name)(rk)), text(message));
    Python::attach(|py| report(py, cb.call1(py, (level, facility, name, message)).map(|r| r.into_bound(py))));
}

unsafe extern "C" fn on_token_refresh(rk: *mut ffi::Client, config: *const c_char, opaque: *mut c_void) {
    let Ok(lib) = lib() else { return };
    let Some(cb) = callbacks(opaque).and_then(|c| c.token.as_ref()) else { return };
    let config = text(config);
    let failure = Python::attach(|py| -> Option<String> {
        let result = match cb.call1(py, (config,)) {
            Ok(result) => result.into_bound(py),
            Err(err) => return Some(format!("the token provider failed: {}", err.value(py))),
        };
        match set_token(lib, rk, &result) {
            Ok(()) => None,
            Err(reason) => Some(reason),
        }
    });
    if let Some(reason) = failure {
        let reason = CString::new(reason.replace('\0', " ")).unwrap_or_default();
        (lib.rd_kafka_oauthbearer_set_token_failure)(rk, reason.as_ptr());
    }
}

/// Hands librdkafka `(token, expiry epoch s[, principal[, extensions dict]])`.
unsafe fn set_token(lib: &Lib, rk: *mut ffi::Client, result: &Bound<'_, PyAny>) -> Result<(), String> {
    let shape = "the token provider must return (token, expiry epoch seconds[, principal[, extensions]])";
    let tuple = result.cast::<PyTuple>().map_err(|_| shape.to_string())?;
    if tuple.len() < 2 {
        return Err(shape.into());
    }
    let token: String = tuple.get_item(0).and_then(|t| t.extract()).map_err(|_| shape.to_string())?;
    let expiry: f64 = tuple.get_item(1).and_then(|t| t.extract()).map_err(|_| shape.to_string())?;
    let principal: String = match tuple.get_item(2) {
        Ok(p) if !p.is_none() => p.extract().map_err(|_| shape.to_string())?,
        _ => String::new(),
    };
    let mut extensions: Vec<CString> = Vec::new();
    if let Ok(ext) = tuple.get_item(3) {
        if let Ok(dict) = ext.cast::<PyDict>() {
            for (k, v) in dict.iter() {
                for item in [k, v] {
                    let s: String = item.str().map_err(|e| e.to_string())?.extract().map_err(|_| shape.to_string())?;
                    extensions.push(CString::new(s).map_err(|_| "an extension holds a NUL byte".to_string())?);
                }
            }
        }
    }
    let ext_ptrs: Vec<*const c_char> = extensions.iter().map(|s| s.as_ptr()).collect();
    let token = CString::new(token).map_err(|_| "the token holds a NUL byte".to_string())?;
    let principal = CString::new(principal).map_err(|_| "the principal holds a NUL byte".to_string())?;
    let mut errstr = errstr_buf();
    let code = (lib.rd_kafka_oauthbearer_set_token)(
        rk,
        token.as_ptr(),
        (expiry * 1000.0) as i64,
        principal.as_ptr(),
        if ext_ptrs.is_empty() { ptr::null() } else { ext_ptrs.as_ptr() },
        ext_ptrs.len(),
        errstr.as_mut_ptr().cast(),
        ERRSTR,
    );
    if code != 0 {
        return Err(text(errstr.as_ptr().cast()));
    }
    Ok(())
}

/// Opens librdkafka at `path`; returns (rd_kafka_version(), rd_kafka_version_str()).
#[pyfunction]
fn load(path: &str) -> PyResult<(i64, String)> {
    let lib = ffi::load(path).map_err(runtime)?;
    unsafe { Ok(((lib.rd_kafka_version)() as i64, text((lib.rd_kafka_version_str)()))) }
}

#[pymodule]
fn waxstreams_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(layouts::layout_rows, m)?)?;
    m.add("LAYOUT_RULES", layouts::RULES)?;
    m.add_class::<PartitionReader>()?;
    m.add_class::<Column>()?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("KafkaError", m.py().get_type::<KafkaError>())?;
    Ok(())
}
