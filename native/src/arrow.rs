//! A column of byte strings handed to Python through the Arrow C data interface
//! (`__arrow_c_array__`): polars takes the buffers as they are, no copy, no pyarrow.
//! Format: large_binary ("Z"): validity bitmap, i64 offsets, the bytes.

use std::ffi::{c_char, c_void};
use std::ptr;
use std::sync::Arc;

use pyo3::ffi as py;
use pyo3::prelude::*;

const FLAG_NULLABLE: i64 = 2;

#[repr(C)]
struct ArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut ArrowSchema,
    dictionary: *mut ArrowSchema,
    release: Option<unsafe extern "C" fn(*mut ArrowSchema)>,
    private_data: *mut c_void,
}

#[repr(C)]
struct ArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut ArrowArray,
    dictionary: *mut ArrowArray,
    release: Option<unsafe extern "C" fn(*mut ArrowArray)>,
    private_data: *mut c_void,
}

/// Byte strings (or nulls) appended one by one, then frozen into a `Column`.
#[derive(Default)]
pub struct Builder {
    offsets: Vec<i64>,
    data: Vec<u8>,
    validity: Vec<u8>,
    nulls: usize,
}

impl Builder {
    pub fn with_capacity(items: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(items + 1);
        offsets.push(0);
        Builder { offsets, data: Vec::with_capacity(bytes), validity: Vec::with_capacity(items / 8 + 1), nulls: 0 }
    }

    fn set_valid(&mut self, valid: bool) {
        let i = self.offsets.len() - 2;
        if i % 8 == 0 {
            self.validity.push(0);
        }
        if valid {
            *self.validity.last_mut().unwrap() |= 1 << (i % 8);
        } else {
            self.nulls += 1;
        }
    }

    /// Appends `len` bytes at `ptr`, or a null when `ptr` is NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or points to `len` readable bytes.
    pub unsafe fn push(&mut self, ptr: *const u8, len: usize) {
        if !ptr.is_null() {
            self.data.extend_from_slice(std::slice::from_raw_parts(ptr, len));
        }
        self.offsets.push(self.data.len() as i64);
        self.set_valid(!ptr.is_null());
    }

    pub fn finish(self) -> Column {
        let len = self.offsets.len() - 1;
        let validity = if self.nulls > 0 { Some(self.validity) } else { None };
        Column { inner: Arc::new(Buffers { offsets: self.offsets, data: self.data, validity, nulls: self.nulls, len }) }
    }
}

struct Buffers {
    offsets: Vec<i64>,
    data: Vec<u8>,
    validity: Option<Vec<u8>>,
    nulls: usize,
    len: usize,
}

/// What an exported ArrowArray keeps alive until its consumer releases it.
struct Exported {
    _buffers: Arc<Buffers>,
    pointers: [*const c_void; 3],
}

/// A column of byte strings: `pl.Series(column)` imports it without copying the bytes.
#[pyclass(module = "waxstreams_native", frozen)]
pub struct Column {
    inner: Arc<Buffers>,
}

#[pymethods]
impl Column {
    fn __len__(&self) -> usize {
        self.inner.len
    }

    #[getter]
    fn null_count(&self) -> usize {
        self.inner.nulls
    }

    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let _ = requested_schema; // one type only: the consumer casts if it wants another
        let schema = Box::new(ArrowSchema {
            format: c"Z".as_ptr(),
            name: c"".as_ptr(),
            metadata: ptr::null(),
            flags: FLAG_NULLABLE,
            n_children: 0,
            children: ptr::null_mut(),
            dictionary: ptr::null_mut(),
            release: Some(release_schema),
            private_data: ptr::null_mut(),
        });
        let b = &self.inner;
        let validity = b.validity.as_ref().map_or(ptr::null(), |v| v.as_ptr().cast());
        let mut exported =
            Box::new(Exported { _buffers: b.clone(), pointers: [validity, b.offsets.as_ptr().cast(), b.data.as_ptr().cast()] });
        let array = Box::new(ArrowArray {
            length: b.len as i64,
            null_count: b.nulls as i64,
            offset: 0,
            n_buffers: 3,
            n_children: 0,
            buffers: exported.pointers.as_mut_ptr(),
            children: ptr::null_mut(),
            dictionary: ptr::null_mut(),
            release: Some(release_array),
            private_data: Box::into_raw(exported).cast(),
        });
        unsafe {
            let schema = capsule(py, Box::into_raw(schema).cast(), c"arrow_schema".as_ptr(), drop_schema_capsule)?;
            let array = capsule(py, Box::into_raw(array).cast(), c"arrow_array".as_ptr(), drop_array_capsule)?;
            Ok((schema, array))
        }
    }
}

unsafe fn capsule<'py>(
    py: Python<'py>,
    pointer: *mut c_void,
    name: *const c_char,
    destructor: unsafe extern "C" fn(*mut py::PyObject),
) -> PyResult<Bound<'py, PyAny>> {
    let obj = py::PyCapsule_New(pointer, name, Some(destructor));
    if obj.is_null() {
        destructor_of_orphan(pointer, name);
        return Err(PyErr::fetch(py));
    }
    Ok(Bound::from_owned_ptr(py, obj))
}

unsafe fn destructor_of_orphan(pointer: *mut c_void, name: *const c_char) {
    if std::ffi::CStr::from_ptr(name) == c"arrow_schema" {
        free_schema(pointer.cast());
    } else {
        free_array(pointer.cast());
    }
}

unsafe extern "C" fn release_schema(schema: *mut ArrowSchema) {
    (*schema).release = None; // static strings, nothing owned
}

unsafe extern "C" fn release_array(array: *mut ArrowArray) {
    drop(Box::from_raw((*array).private_data.cast::<Exported>()));
    (*array).private_data = ptr::null_mut();
    (*array).release = None;
}

unsafe fn free_schema(schema: *mut ArrowSchema) {
    if let Some(release) = (*schema).release {
        release(schema); // not taken by a consumer (a consumer moves it out and clears `release`)
    }
    drop(Box::from_raw(schema));
}

unsafe fn free_array(array: *mut ArrowArray) {
    if let Some(release) = (*array).release {
        release(array);
    }
    drop(Box::from_raw(array));
}

unsafe extern "C" fn drop_schema_capsule(capsule: *mut py::PyObject) {
    let schema = py::PyCapsule_GetPointer(capsule, c"arrow_schema".as_ptr());
    if !schema.is_null() {
        free_schema(schema.cast());
    }
}

unsafe extern "C" fn drop_array_capsule(capsule: *mut py::PyObject) {
    let array = py::PyCapsule_GetPointer(capsule, c"arrow_array".as_ptr());
    if !array.is_null() {
        free_array(array.cast());
    }
}
