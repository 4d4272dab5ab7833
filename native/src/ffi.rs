//! The part of librdkafka's C API the reader uses, resolved at run time from the librdkafka
//! that confluent-kafka's wheel ships (so both use one library, one version, nothing built).
//! Layouts follow librdkafka's rdkafka.h (stable since 1.x).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::OnceLock;

pub type Client = c_void; // rd_kafka_t
pub type Conf = c_void; // rd_kafka_conf_t
pub type Queue = c_void; // rd_kafka_queue_t
pub type Error = c_void; // rd_kafka_error_t

pub const CONSUMER: c_int = 1; // RD_KAFKA_CONSUMER
pub const CONF_OK: c_int = 0;
pub const ERR_PARTITION_EOF: c_int = -191;
pub const ERR_NO_OFFSET: c_int = -168; // an async commit with nothing to commit
pub const OFFSET_INVALID: i64 = -1001; // a watermark not known yet

#[repr(C)]
pub struct Message {
    pub err: c_int,
    pub rkt: *mut c_void,
    pub partition: i32,
    pub payload: *mut c_void, // the error string when err != 0
    pub len: usize,
    pub key: *mut c_void,
    pub key_len: usize,
    pub offset: i64,
    pub private: *mut c_void,
}

#[repr(C)]
pub struct TopicPartition {
    pub topic: *mut c_char,
    pub partition: i32,
    pub offset: i64,
    pub metadata: *mut c_void,
    pub metadata_size: usize,
    pub opaque: *mut c_void,
    pub err: c_int,
    pub private: *mut c_void,
}

#[repr(C)]
pub struct TopicPartitionList {
    pub cnt: c_int,
    pub size: c_int,
    pub elems: *mut TopicPartition,
}

pub type ErrorCb = unsafe extern "C" fn(*mut Client, c_int, *const c_char, *mut c_void);
pub type LogCb = unsafe extern "C" fn(*const Client, c_int, *const c_char, *const c_char);
pub type TokenRefreshCb = unsafe extern "C" fn(*mut Client, *const c_char, *mut c_void);

const RTLD_NOW: c_int = 2;

#[link(name = "dl")]
extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *const c_char;
}

macro_rules! library {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// librdkafka's functions, each resolved once.
        #[allow(non_snake_case)]
        pub struct Lib { $(pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)* }

        impl Lib {
            unsafe fn resolve(handle: *mut c_void, path: &str) -> Result<Lib, String> {
                Ok(Lib {$($name: {
                    let symbol = dlsym(handle, concat!(stringify!($name), "\0").as_ptr().cast());
                    if symbol.is_null() {
                        return Err(format!("{path} has no {}: not a librdkafka this reader supports", stringify!($name)));
                    }
                    std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) $(-> $ret)?>(symbol)
                },)*})
            }
        }
    };
}

library! {
    rd_kafka_version: fn() -> c_int;
    rd_kafka_version_str: fn() -> *const c_char;
    rd_kafka_err2str: fn(c_int) -> *const c_char;
    rd_kafka_err2name: fn(c_int) -> *const c_char;
    rd_kafka_conf_new: fn() -> *mut Conf;
    rd_kafka_conf_destroy: fn(*mut Conf);
    rd_kafka_conf_set: fn(*mut Conf, *const c_char, *const c_char, *mut c_char, usize) -> c_int;
    rd_kafka_conf_set_opaque: fn(*mut Conf, *mut c_void);
    rd_kafka_conf_set_error_cb: fn(*mut Conf, Option<ErrorCb>);
    rd_kafka_conf_set_log_cb: fn(*mut Conf, Option<LogCb>);
    rd_kafka_conf_set_oauthbearer_token_refresh_cb: fn(*mut Conf, Option<TokenRefreshCb>);
    rd_kafka_conf_enable_sasl_queue: fn(*mut Conf, c_int);
    rd_kafka_new: fn(c_int, *mut Conf, *mut c_char, usize) -> *mut Client;
    rd_kafka_destroy: fn(*mut Client);
    rd_kafka_name: fn(*const Client) -> *const c_char;
    rd_kafka_opaque: fn(*const Client) -> *mut c_void;
    rd_kafka_sasl_background_callbacks_enable: fn(*mut Client) -> *mut Error;
    rd_kafka_error_string: fn(*const Error) -> *const c_char;
    rd_kafka_error_destroy: fn(*mut Error);
    rd_kafka_oauthbearer_set_token:
        fn(*mut Client, *const c_char, i64, *const c_char, *const *const c_char, usize, *mut c_char, usize) -> c_int;
    rd_kafka_oauthbearer_set_token_failure: fn(*mut Client, *const c_char) -> c_int;
    rd_kafka_set_log_queue: fn(*mut Client, *mut Queue) -> c_int;
    rd_kafka_poll_set_consumer: fn(*mut Client) -> c_int;
    rd_kafka_queue_get_consumer: fn(*mut Client) -> *mut Queue;
    rd_kafka_queue_destroy: fn(*mut Queue);
    rd_kafka_consume_batch_queue: fn(*mut Queue, c_int, *mut *mut Message, usize) -> isize;
    rd_kafka_message_timestamp: fn(*const Message, *mut c_int) -> i64;
    rd_kafka_message_destroy: fn(*mut Message);
    rd_kafka_topic_partition_list_new: fn(c_int) -> *mut TopicPartitionList;
    rd_kafka_topic_partition_list_add: fn(*mut TopicPartitionList, *const c_char, i32) -> *mut TopicPartition;
    rd_kafka_topic_partition_list_destroy: fn(*mut TopicPartitionList);
    rd_kafka_assign: fn(*mut Client, *const TopicPartitionList) -> c_int;
    rd_kafka_commit: fn(*mut Client, *const TopicPartitionList, c_int) -> c_int;
    rd_kafka_get_watermark_offsets: fn(*mut Client, *const c_char, i32, *mut i64, *mut i64) -> c_int;
    rd_kafka_consumer_close: fn(*mut Client) -> c_int;
}

static LIB: OnceLock<Lib> = OnceLock::new();

/// Opens librdkafka at `path` (already loaded by confluent-kafka: the same copy is used).
pub fn load(path: &str) -> Result<&'static Lib, String> {
    if let Some(lib) = LIB.get() {
        return Ok(lib);
    }
    let c_path = CString::new(path).map_err(|_| format!("{path:?} holds a NUL byte"))?;
    let lib = unsafe {
        let handle = dlopen(c_path.as_ptr(), RTLD_NOW);
        if handle.is_null() {
            return Err(text(dlerror()));
        }
        Lib::resolve(handle, path)?
    };
    Ok(LIB.get_or_init(|| lib))
}

/// The loaded library; `load` was called first (the Python module does so on import).
pub fn lib() -> Result<&'static Lib, String> {
    LIB.get().ok_or_else(|| "librdkafka is not loaded: call waxstreams_native.load(path) first".to_string())
}

/// A C string as a Rust string (lossy, never fails); "" for NULL.
pub fn text(s: *const c_char) -> String {
    if s.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

/// An error code's name and description, e.g. ("_TRANSPORT", "Broker transport failure").
pub fn describe(lib: &Lib, code: c_int) -> (String, String) {
    unsafe { (text((lib.rd_kafka_err2name)(code)), text((lib.rd_kafka_err2str)(code))) }
}
