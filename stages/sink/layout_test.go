package sink

import (
	"os"
	"reflect"
	"syscall"
	"testing"

	"github.com/asticode/go-astiav"
)

// TestAstiavLayout checks what fcPtr and dictPtr rely on: go-astiav keeps
// the C pointer as the first field of those types.
func TestAstiavLayout(t *testing.T) {
	for _, v := range []any{astiav.FormatContext{}, astiav.Dictionary{}} {
		typ := reflect.TypeOf(v)
		if f := typ.Field(0); f.Name != "c" || f.Type.Kind() != reflect.Pointer || f.Offset != 0 {
			t.Fatalf("%s: first field is %s %s at %d; fcPtr/dictPtr need updating for this go-astiav", typ, f.Name, f.Type, f.Offset)
		}
	}
	d := astiav.NewDictionary()
	defer d.Free()
	for _, k := range []string{"a", "b", "c"} {
		if err := d.Set(k, "1", 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := dictCount(d); n != 3 {
		t.Fatalf("entries through dictPtr = %d, want 3", n)
	}
	fc, err := astiav.AllocOutputFormatContext(nil, "mpegts", "x.ts")
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Free()
	if hasPB(fc) {
		t.Fatal("a new format context has an output through fcPtr")
	}
	io, err := newMuxIO()
	if err != nil {
		t.Fatal(err)
	}
	defer io.free()
	io.install(fc)
	fd, err := syscall.Open(os.DevNull, syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := openFD(fc, fd, os.DevNull); err != nil || !hasPB(fc) {
		t.Fatalf("an output given through fcPtr is not there: %v", err)
	}
	if err := closePB(fc); err != nil || hasPB(fc) {
		t.Fatalf("closing the output through fcPtr: %v (still there: %v)", err, hasPB(fc))
	}
}
