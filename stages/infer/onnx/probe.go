package onnx

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef struct {
	const void *(*GetApi)(unsigned int version);
	const char *(*GetVersionString)(void);
} avf_ort_api_base;

typedef const avf_ort_api_base *(*avf_get_api_base)(void);

// avf_ort_version opens a library, asks its OrtGetApiBase for the version
// string, and closes it. Returns NULL with *err set on failure.
static const char *avf_ort_version(const char *path, char **err) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { *err = dlerror(); return NULL; }
	avf_get_api_base f = (avf_get_api_base)dlsym(h, "OrtGetApiBase");
	if (!f) { *err = "no OrtGetApiBase symbol: not an ONNX Runtime library"; dlclose(h); return NULL; }
	const avf_ort_api_base *b = f();
	if (!b || !b->GetVersionString) { *err = "OrtGetApiBase returned nothing"; dlclose(h); return NULL; }
	// The string lives in the library, which stays loaded by the process below.
	return b->GetVersionString();
}
*/
import "C"

import (
	"errors"
	"unsafe"
)

// probeVersion reads a library's ONNX Runtime version before it is
// initialised, so that a library of another version gives a clear error
// instead of an API-level failure.
func probeVersion(path string) (string, error) {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	var cerr *C.char
	v := C.avf_ort_version(cs, &cerr)
	if v == nil {
		msg := "unknown error"
		if cerr != nil {
			msg = C.GoString(cerr)
		}
		return "", errors.New(msg)
	}
	return C.GoString(v), nil
}
