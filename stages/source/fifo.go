package source

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/asticode/go-astiav"
)

// A FIFO is read by avflow, not by FFmpeg's file protocol: FFmpeg would
// open it with a blocking open(2), which waits for a writer and which no
// interrupt callback reaches, so a run could only be killed. Here the FIFO
// is opened without blocking and read through Go's poller, behind a custom
// AVIO context; a deadline ends a wait or a read when the run stops.

// fifoBuffer is the AVIO buffer size for a FIFO (a pipe holds 64 KiB).
const fifoBuffer = 64 << 10

// isFIFO says whether url names a FIFO (named pipe) on this machine.
func isFIFO(url string) bool {
	if strings.Contains(url, "://") {
		return false
	}
	fi, err := os.Stat(url)
	return err == nil && fi.Mode()&fs.ModeNamedPipe != 0
}

type fifo struct {
	f    *os.File
	rc   syscall.RawConn
	pb   *astiav.IOContext
	data bool // a writer has sent something
}

// openFIFO opens a FIFO for reading without waiting for a writer.
func openFIFO(path string) (*fifo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &fifo{f: f, rc: rc}
	if p.pb, err = astiav.AllocIOContext(fifoBuffer, false, p.read, nil, nil); err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// read is FFmpeg's read callback. Until a writer has sent data it waits
// for some (a FIFO with no writer reads as empty, which is not yet the
// end); then the writer closing its end is the end of the input.
func (p *fifo) read(b []byte) (int, error) {
	var n int
	var err error
	if p.data {
		n, err = p.f.Read(b)
	} else {
		n, err = p.first(b)
	}
	switch {
	case n > 0:
		return n, nil
	case err == nil || errors.Is(err, io.EOF):
		return 0, astiav.ErrEof
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, astiav.ErrExit
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return 0, astiav.Error(-int(errno))
	}
	return 0, astiav.ErrEio
}

// first waits in Go's poller for the first bytes a writer sends.
func (p *fifo) first(b []byte) (int, error) {
	var n int
	var rerr error
	err := p.rc.Read(func(fd uintptr) bool {
		n, rerr = syscall.Read(int(fd), b)
		// EAGAIN: a writer, no data yet; 0: no writer (yet, or any more).
		return !(rerr == syscall.EAGAIN || rerr == syscall.EINTR || (rerr == nil && n == 0))
	})
	if err != nil {
		return 0, err
	}
	if n > 0 {
		p.data = true
	}
	return n, rerr
}

// interrupt ends a wait or a read in progress, and every later one.
func (p *fifo) interrupt() { _ = p.f.SetReadDeadline(time.Unix(1, 0)) }

func (p *fifo) close() {
	p.pb.Free()
	_ = p.f.Close()
}
