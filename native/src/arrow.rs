//! A column of byte strings handed to Python through the Arrow C data interface
//! (`__arrow_c_array__`): polars takes the buffers as they are, no copy, no pyarrow.
//! Format: binary view ("vz") or utf8 view ("vu"), polars' own layouts for Binary and String:
//! nothing to convert on import.

use std::ffi::{c_char, c_void, CStr};
use std::ptr;
use std::sync::Arc;

use pyo3::ffi as py;
use pyo3::prelude::*;

const FLAG_NULLABLE: i64 = 2;

#[repr(C)]
pub(crate) struct ArrowSchema {
    pub format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut ArrowSchema,
    dictionary: *mut ArrowSchema,
    pub release: Option<unsafe extern "C" fn(*mut ArrowSchema)>,
    private_data: *mut c_void,
}

#[repr(C)]
pub(crate) struct ArrowArray {
    pub length: i64,
    null_count: i64,
    pub offset: i64,
    pub n_buffers: i64,
    n_children: i64,
    pub buffers: *mut *const c_void,
    children: *mut *mut ArrowArray,
    dictionary: *mut ArrowArray,
    pub release: Option<unsafe extern "C" fn(*mut ArrowArray)>,
    private_data: *mut c_void,
}

/// Byte strings (or nulls) appended one by one, then frozen into a `Column`.
pub struct Builder {
    views: Vec<u128>, // Arrow's 16-byte views: length, then the bytes inline (<= 12) or prefix, buffer, offset
    buffers: Vec<Vec<u8>>,
    validity: Vec<u8>,
    nulls: usize,
    long_bytes: usize, // what the values longer than 12 bytes still to come hold, reserved at once
}

const INLINE: usize = 12;
const MAX_BUFFER: usize = i32::MAX as usize; // a view's offset is 32 bits

impl Builder {
    /// `long_bytes`: the total length of the values longer than 12 bytes (one allocation).
    pub fn with_capacity(items: usize, long_bytes: usize) -> Self {
        Builder {
            views: Vec::with_capacity(items),
            buffers: Vec::new(),
            validity: Vec::with_capacity(items / 8 + 1),
            nulls: 0,
            long_bytes,
        }
    }

    pub fn is_long(len: usize) -> bool {
        len > INLINE
    }

    /// Appends `len` bytes at `ptr`, or a null when `ptr` is NULL.
    ///
    /// # Safety
    /// `ptr` is NULL or points to `len` readable bytes.
    #[inline]
    pub unsafe fn push(&mut self, ptr: *const u8, len: usize) {
        let i = self.views.len();
        if i % 8 == 0 {
            self.validity.push(0);
        }
        if ptr.is_null() {
            self.nulls += 1;
            self.views.push(0);
            return;
        }
        *self.validity.last_mut().unwrap() |= 1 << (i % 8);
        let bytes = std::slice::from_raw_parts(ptr, len);
        let mut view = [0u8; 16];
        view[..4].copy_from_slice(&(len as u32).to_le_bytes());
        if len <= INLINE {
            view[4..4 + len].copy_from_slice(bytes);
        } else {
            if self.buffers.last().is_none_or(|b| b.len() + len > MAX_BUFFER) {
                self.buffers.push(Vec::with_capacity(self.long_bytes.clamp(len, MAX_BUFFER)));
            }
            let index = self.buffers.len() - 1;
            let buffer = self.buffers.last_mut().unwrap();
            view[4..8].copy_from_slice(&bytes[..4]);
            view[8..12].copy_from_slice(&(index as u32).to_le_bytes());
            view[12..16].copy_from_slice(&(buffer.len() as u32).to_le_bytes());
            buffer.extend_from_slice(bytes);
            self.long_bytes = self.long_bytes.saturating_sub(len);
        }
        self.views.push(u128::from_le_bytes(view));
    }

    pub fn finish(self) -> Column {
        self.finish_as(c"vz")
    }

    /// As `finish`, typed as text ("vu", utf8 view, polars' String): every value pushed must be UTF-8.
    pub fn finish_utf8(self) -> Column {
        self.finish_as(c"vu")
    }

    fn finish_as(self, format: &'static CStr) -> Column {
        let validity = if self.nulls > 0 { Some(self.validity) } else { None };
        let sizes = self.buffers.iter().map(|b| b.len() as i64).collect();
        let buffers = Buffers { views: self.views, buffers: self.buffers, sizes, validity, nulls: self.nulls };
        Column { inner: Arc::new(buffers), format }
    }
}

struct Buffers {
    views: Vec<u128>,
    buffers: Vec<Vec<u8>>,
    sizes: Vec<i64>, // the variadic buffers' lengths, the last buffer of a view array
    validity: Option<Vec<u8>>,
    nulls: usize,
}

/// What an exported ArrowArray keeps alive until its consumer releases it.
struct Exported {
    _buffers: Arc<Buffers>,
    pointers: Vec<*const c_void>,
}

/// A column of byte strings: `pl.Series(column)` imports it without copying the bytes.
#[pyclass(module = "waxstreams_native", frozen)]
pub struct Column {
    inner: Arc<Buffers>,
    format: &'static CStr,
}

#[pymethods]
impl Column {
    fn __len__(&self) -> usize {
        self.inner.views.len()
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
            format: self.format.as_ptr(),
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
        let mut pointers = vec![validity, b.views.as_ptr().cast()];
        pointers.extend(b.buffers.iter().map(|buffer| buffer.as_ptr().cast::<c_void>()));
        pointers.push(b.sizes.as_ptr().cast());
        let mut exported = Box::new(Exported { _buffers: b.clone(), pointers });
        let array = Box::new(ArrowArray {
            length: b.views.len() as i64,
            null_count: b.nulls as i64,
            offset: 0,
            n_buffers: exported.pointers.len() as i64,
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
