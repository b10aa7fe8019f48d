package natsauth_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/avflow/avflow/pipeline/natsauth"
	"github.com/avflow/avflow/pipeline/natsauth/natsauthtest"
)

const (
	password = "pw-s3cret-1"
	token    = "tok-s3cret-2"
)

// files are the inputs of the tests, made fresh in a test folder.
type files struct {
	dir                   string
	creds, otherCreds     string // two users' creds files
	mixedCreds            string // one user's JWT with another's seed
	seed, seedPub         string
	accountSeed           string // an nkey seed, but of an account
	pki, other            natsauthtest.PKI
	garbage, empty, nodir string
}

func newFiles(t *testing.T) files {
	dir := t.TempDir()
	op := natsauthtest.NewOperator(t)
	f := files{dir: dir, pki: natsauthtest.NewPKI(t, dir)}
	otherDir := filepath.Join(dir, "other")
	if err := os.Mkdir(otherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	f.other = natsauthtest.NewPKI(t, otherDir)
	f.creds = op.Creds(t, filepath.Join(dir, "faces.creds"), "faces")
	f.otherCreds = op.Creds(t, filepath.Join(dir, "other.creds"), "other")
	f.seed = filepath.Join(dir, "user.nk")
	f.seedPub = natsauthtest.UserSeed(t, f.seed)
	f.mixedCreds = filepath.Join(dir, "mixed.creds")
	a, b := read(t, f.creds), read(t, f.otherCreds)
	// The JWT block of one file and the seed block of the other.
	cut := func(s string) (string, string) {
		i := strings.Index(s, "-----BEGIN USER NKEY SEED")
		i = strings.LastIndex(s[:i], "\n\n")
		return s[:i], s[i:]
	}
	jwtA, _ := cut(a)
	_, seedB := cut(b)
	writeFile(t, f.mixedCreds, jwtA+seedB)
	f.accountSeed = filepath.Join(dir, "account.nk")
	acc, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	accSeed, _ := acc.Seed()
	writeFile(t, f.accountSeed, string(accSeed)+"\n")
	f.garbage = filepath.Join(dir, "garbage.pem")
	writeFile(t, f.garbage, "not a pem file\n")
	f.empty = filepath.Join(dir, "empty")
	writeFile(t, f.empty, "")
	f.nodir = filepath.Join(dir, "nowhere", "faces.creds")
	return f
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// applied is what a list of options sets on a connection's nats.Options.
type applied struct {
	User, Password, Token, Nkey string
	JWT                         string // what the user JWT callback gives
	Signs                       bool   // a signature callback is set
	Secure, RootCAs, ClientCert bool
}

func apply(t *testing.T, opts []nats.Option) applied {
	t.Helper()
	o := nats.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatalf("applying an option: %v", err)
		}
	}
	a := applied{User: o.User, Password: o.Password, Token: o.Token, Nkey: o.Nkey,
		Signs: o.SignatureCB != nil, Secure: o.Secure, RootCAs: o.RootCAsCB != nil, ClientCert: o.TLSCertCB != nil}
	if o.UserJWT != nil {
		jwt, err := o.UserJWT()
		if err != nil {
			t.Fatalf("user JWT callback: %v", err)
		}
		a.JWT = jwt
	}
	return a
}

// jwtOf is the JWT in a creds file.
func jwtOf(t *testing.T, path string) string {
	lines := strings.Split(read(t, path), "\n")
	return lines[1] // after "-----BEGIN NATS USER JWT-----"
}

func TestOptions(t *testing.T) {
	f := newFiles(t)
	tests := []struct {
		name   string
		cfg    natsauth.Config
		method natsauth.Method
		tls    bool
		want   applied
	}{
		{"nothing", natsauth.Config{URL: "nats://127.0.0.1:4222"}, natsauth.MethodNone, false, applied{}},
		{"credentials in the URL", natsauth.Config{URL: "nats://u:" + password + "@127.0.0.1:4222"}, natsauth.MethodURL, false, applied{}},
		{"token in the second URL", natsauth.Config{URL: "nats://h1:4222, nats://" + token + "@h2:4222"}, natsauth.MethodURL, false, applied{}},
		{"tls URL", natsauth.Config{URL: "tls://127.0.0.1:4222"}, natsauth.MethodNone, true, applied{}},
		{"creds", natsauth.Config{Creds: f.creds}, natsauth.MethodCreds, false, applied{JWT: jwtOf(t, f.creds), Signs: true}},
		{"nkey", natsauth.Config{NKey: f.seed}, natsauth.MethodNKey, false, applied{Nkey: f.seedPub, Signs: true}},
		{"user and password", natsauth.Config{User: "alice", Password: password}, natsauth.MethodPassword, false, applied{User: "alice", Password: password}},
		{"token", natsauth.Config{Token: token}, natsauth.MethodToken, false, applied{Token: token}},
		{"CA", natsauth.Config{TLSCA: f.pki.CA}, natsauth.MethodNone, true, applied{Secure: true, RootCAs: true}},
		{"client certificate", natsauth.Config{TLSCert: f.pki.ClientCert, TLSKey: f.pki.ClientKey}, natsauth.MethodNone, true,
			applied{Secure: true, ClientCert: true}},
		{"creds over TLS with a CA and a client certificate",
			natsauth.Config{URL: "tls://h:4222", Creds: f.creds, TLSCA: f.pki.CA, TLSCert: f.pki.ClientCert, TLSKey: f.pki.ClientKey},
			natsauth.MethodCreds, true, applied{JWT: jwtOf(t, f.creds), Signs: true, Secure: true, RootCAs: true, ClientCert: true}},
		{"user in the URL with TLS", natsauth.Config{URL: "nats://u:" + password + "@h:4222", TLSCA: f.pki.CA}, natsauth.MethodURL, true,
			applied{Secure: true, RootCAs: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := tt.cfg.Options()
			if err != nil {
				t.Fatalf("Options: %v", err)
			}
			if got := apply(t, opts); got != tt.want {
				t.Errorf("options set %+v, want %+v", got, tt.want)
			}
			if m := tt.cfg.Method(); m != tt.method {
				t.Errorf("Method() = %s, want %s", m, tt.method)
			}
			if tls := tt.cfg.TLS(); tls != tt.tls {
				t.Errorf("TLS() = %v, want %v", tls, tt.tls)
			}
		})
	}
}

func TestOptionsErrors(t *testing.T) {
	f := newFiles(t)
	tests := []struct {
		name string
		cfg  natsauth.Config
		is   error  // besides ErrConfig
		want string // the whole message
	}{
		{"creds missing", natsauth.Config{Creds: f.nodir}, fs.ErrNotExist,
			fmt.Sprintf("natsauth: --creds %s: open %[1]s: no such file or directory", f.nodir)},
		{"creds a folder", natsauth.Config{Creds: f.dir}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --creds %s: not a valid file for this flag: read %[1]s: is a directory", f.dir)},
		{"creds empty", natsauth.Config{Creds: f.empty}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --creds %s: not a valid file for this flag: the file is empty", f.empty)},
		{"creds holding a seed only", natsauth.Config{Creds: f.seed}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --creds %s: not a valid file for this flag: want a NATS user creds file (a user JWT and its nkey seed): ", f.seed)},
		{"creds of two users", natsauth.Config{Creds: f.mixedCreds}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --creds %s: not a valid file for this flag: want a NATS user creds file (a user JWT and its nkey seed): the seed is of user ", f.mixedCreds)},
		{"nkey missing", natsauth.Config{NKey: f.nodir}, fs.ErrNotExist,
			fmt.Sprintf("natsauth: --nkey %s: open %[1]s: no such file or directory", f.nodir)},
		{"nkey garbage", natsauth.Config{NKey: f.garbage}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --nkey %s: not a valid file for this flag: ", f.garbage)},
		{"nkey of an account", natsauth.Config{NKey: f.accountSeed}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --nkey %s: not a valid file for this flag: nats: Not a valid nkey user seed", f.accountSeed)},
		{"creds and user", natsauth.Config{Creds: f.creds, User: "alice", Password: password}, natsauth.ErrConflict,
			"natsauth: --creds and --user/--password: only one way to authenticate may be given"},
		{"nkey and token", natsauth.Config{NKey: f.seed, Token: token}, natsauth.ErrConflict,
			"natsauth: --nkey and --token: only one way to authenticate may be given"},
		{"token and a password in the URL", natsauth.Config{URL: "nats://u:" + password + "@h:4222", Token: token}, natsauth.ErrConflict,
			"natsauth: --token and credentials in the URL nats://u:xxxxx@h:4222: only one way to authenticate may be given"},
		{"user without password", natsauth.Config{User: "alice"}, natsauth.ErrMissing,
			"natsauth: --user alice: missing: --password"},
		{"password without user", natsauth.Config{Password: password}, natsauth.ErrMissing,
			"natsauth: --password: missing: --user"},
		{"certificate without key", natsauth.Config{TLSCert: f.pki.ClientCert}, natsauth.ErrMissing,
			fmt.Sprintf("natsauth: --tls-cert %s: missing: --tls-key (the certificate's private key)", f.pki.ClientCert)},
		{"key without certificate", natsauth.Config{TLSKey: f.pki.ClientKey}, natsauth.ErrMissing,
			fmt.Sprintf("natsauth: --tls-key %s: missing: --tls-cert (the certificate the key belongs to)", f.pki.ClientKey)},
		{"CA missing", natsauth.Config{TLSCA: f.nodir}, fs.ErrNotExist,
			fmt.Sprintf("natsauth: --tls-ca %s: open %[1]s: no such file or directory", f.nodir)},
		{"CA garbage", natsauth.Config{TLSCA: f.garbage}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --tls-ca %s: not a valid file for this flag: nats: failed to parse root certificate from %q", f.garbage, f.garbage)},
		{"key missing", natsauth.Config{TLSCert: f.pki.ClientCert, TLSKey: f.nodir}, fs.ErrNotExist,
			fmt.Sprintf("natsauth: --tls-key %s: open %[1]s: no such file or directory", f.nodir)},
		{"key of another certificate", natsauth.Config{TLSCert: f.pki.ClientCert, TLSKey: f.other.ClientKey}, natsauth.ErrBadFile,
			fmt.Sprintf("natsauth: --tls-cert %s: not a valid file for this flag: nats: error loading client certificate: tls: private key does not match public key", f.pki.ClientCert)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := tt.cfg.Options()
			if err == nil {
				t.Fatalf("Options gave %d options, want an error", len(opts))
			}
			if !errors.Is(err, natsauth.ErrConfig) || !errors.Is(err, tt.is) {
				t.Errorf("error %q is not ErrConfig and %q", err, tt.is)
			}
			var e *natsauth.Error
			if !errors.As(err, &e) {
				t.Errorf("error %q is not a *natsauth.Error", err)
			}
			if msg := err.Error(); !matches(msg, tt.want) {
				t.Errorf("error:\n%s\nwant:\n%s", msg, tt.want)
			}
			for _, s := range []string{password, token} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error shows a secret: %s", err)
				}
			}
		})
	}
}

// matches says whether msg is want, or starts with it where want ends with
// a space (the rest is a library's text).
func matches(msg, want string) bool {
	if strings.HasSuffix(want, " ") {
		return strings.HasPrefix(msg, want)
	}
	return msg == want
}

// TestUnreadable: a file the user may not read is named with the cause.
func TestUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every file")
	}
	f := newFiles(t)
	if err := os.Chmod(f.creds, 0); err != nil {
		t.Fatal(err)
	}
	_, err := natsauth.Config{Creds: f.creds}.Options()
	want := fmt.Sprintf("natsauth: --creds %s: open %[1]s: permission denied", f.creds)
	if err == nil || err.Error() != want || !errors.Is(err, fs.ErrPermission) {
		t.Errorf("error %v, want %s", err, want)
	}
}

// TestNoSecretShown: String, LogValue and every fmt verb describe the
// method but never show a password or token.
func TestNoSecretShown(t *testing.T) {
	tests := []struct {
		cfg      natsauth.Config
		str, log string
	}{
		{natsauth.Config{URL: "nats://h:4222"}, "no credentials", "nats.auth=none nats.tls=false"},
		{natsauth.Config{URL: "nats://alice:" + password + "@h:4222"}, "credentials in the URL", "nats.auth=url nats.tls=false"},
		{natsauth.Config{User: "alice", Password: password}, "user alice with a password", "nats.auth=password nats.user=alice nats.tls=false"},
		{natsauth.Config{Token: token, URL: "tls://h:4222"}, "a token, TLS (no client certificate)", "nats.auth=token nats.tls=true"},
		{natsauth.Config{TLSCA: "ca.pem"}, "no credentials, TLS (CA ca.pem, no client certificate)", "nats.auth=none nats.tls=true nats.tls_ca=ca.pem"},
		{natsauth.Config{TLSCert: "c.pem", TLSKey: "k.pem"}, "TLS (client certificate c.pem)", "nats.auth=none nats.tls=true nats.tls_cert=c.pem"},
		{natsauth.Config{Creds: "faces.creds", TLSCA: "ca.pem", TLSCert: "c.pem", TLSKey: "k.pem"},
			"creds faces.creds, TLS (CA ca.pem, client certificate c.pem)",
			"nats.auth=creds nats.file=faces.creds nats.tls=true nats.tls_ca=ca.pem nats.tls_cert=c.pem"},
		{natsauth.Config{NKey: "user.nk"}, "nkey user.nk", "nats.auth=nkey nats.file=user.nk nats.tls=false"},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			if s := tt.cfg.String(); s != tt.str {
				t.Errorf("String() = %q, want %q", s, tt.str)
			}
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("connecting", "nats", tt.cfg)
			if !strings.Contains(buf.String(), " "+tt.log+"\n") {
				t.Errorf("log line %q lacks %q", buf.String(), tt.log)
			}
			var jbuf bytes.Buffer
			slog.New(slog.NewJSONHandler(&jbuf, nil)).Info("connecting", "nats", tt.cfg)
			shown := buf.String() + jbuf.String() + fmt.Sprintf("%v %+v %#v %s", tt.cfg, tt.cfg, tt.cfg, tt.cfg)
			for _, s := range []string{password, token} {
				if strings.Contains(shown, s) {
					t.Errorf("%q shown: %s", s, shown)
				}
			}
		})
	}
}
