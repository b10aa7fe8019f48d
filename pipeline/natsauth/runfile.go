package natsauth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// ErrNoRun is ReadRunFile's error when no run of that name has left a
// run file on this machine for this user.
var ErrNoRun = errors.New("no running pipeline")

// RunFile is where a run of avflow whose embedded NATS server listens
// (avflow run --listen, or a pipeline with a personalise stage) says how
// other processes of the same user on this machine reach it: avflow
// viewers reads it when it is given no --nats. It holds the run's
// generated password, so it is written mode 0600 in a folder only its
// user can enter.
type RunFile struct {
	Pipeline string `json:"pipeline"`
	URL      string `json:"url"`
	User     string `json:"user"`
	Password string `json:"password"`
	PID      int    `json:"pid"`
}

// runDir is $XDG_RUNTIME_DIR/avflow, else a folder of the user's in the
// temporary directory.
func runDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "avflow")
	}
	return filepath.Join(os.TempDir(), "avflow-"+strconv.Itoa(os.Getuid()))
}

// RunFilePath is where the run file of a pipeline (its deployment name) lives.
func RunFilePath(pipeline string) string { return filepath.Join(runDir(), pipeline+".json") }

// WriteRunFile writes f for its pipeline and returns a func that removes
// it again, unless another run of the same name has replaced it since.
func WriteRunFile(f RunFile) (remove func(), err error) {
	dir := runDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("run file: %w", err)
	}
	if err := ownedOnly(dir, true); err != nil {
		return nil, err
	}
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("run file: %w", err)
	}
	path := RunFilePath(f.Pipeline)
	tmp, err := os.CreateTemp(dir, ".run-*")
	if err != nil {
		return nil, fmt.Errorf("run file: %w", err)
	}
	_, werr := tmp.Write(b)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path) // CreateTemp made it 0600
	}
	if werr != nil {
		os.Remove(tmp.Name()) //nolint:errcheck // best effort
		return nil, fmt.Errorf("run file: writing %s failed: %w", path, werr)
	}
	return func() {
		if cur, err := readRunFile(path); err == nil && cur.PID == f.PID && cur.URL == f.URL {
			os.Remove(path) //nolint:errcheck // best effort
		}
	}, nil
}

// ReadRunFile reads the run file of the pipeline, refusing one whose
// process has ended (a run killed before it could remove it).
func ReadRunFile(pipeline string) (RunFile, error) {
	path := RunFilePath(pipeline)
	f, err := readRunFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, fmt.Errorf("%w %q on this machine (no %s): start it with avflow run, or give its NATS server with --nats", ErrNoRun, pipeline, path)
	}
	if err != nil {
		return f, err
	}
	if !alive(f.PID) {
		return f, fmt.Errorf("%w %q: its run (pid %d) has ended: %s is stale", ErrNoRun, pipeline, f.PID, path)
	}
	return f, nil
}

func readRunFile(path string) (RunFile, error) {
	var f RunFile
	if err := ownedOnly(filepath.Dir(path), true); err != nil && !errors.Is(err, os.ErrNotExist) {
		return f, err
	}
	if err := ownedOnly(path, false); err != nil {
		return f, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return f, fmt.Errorf("run file %s: %w", path, err)
	}
	return f, nil
}

// Config is how to connect to the run of the file.
func (f RunFile) Config() Config { return Config{URL: f.URL, User: f.User, Password: f.Password} }

// alive reports whether process pid exists.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ownedOnly checks that path (not followed if it is a link) is a folder
// (dir) or a regular file of this user's that no other user may open: in
// a shared temporary folder another user could have made
// /tmp/avflow-<uid> first, with a run file pointing at their server.
func ownedOnly(path string, dir bool) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	kind := "a regular file"
	ok := st.Mode().IsRegular()
	if dir {
		kind, ok = "a folder", st.IsDir()
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	switch {
	case !ok:
		return fmt.Errorf("run file: %s is not %s (%s)", path, kind, st.Mode().Type())
	case sys != nil && int(sys.Uid) != os.Getuid():
		return fmt.Errorf("run file: %s belongs to user %d, not to this user (%d): not trusted", path, sys.Uid, os.Getuid())
	case st.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("run file: %s is open to other users (mode %04o): want %04o", path, st.Mode().Perm(), map[bool]os.FileMode{true: 0o700, false: 0o600}[dir])
	}
	return nil
}
