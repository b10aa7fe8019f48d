// Package natsauth turns the credentials and TLS settings of a NATS
// connection (a JWT creds file, an nkey seed, a user and password, a token,
// a CA and a client certificate) into nats.go options, after checking that
// the files can be read and that the settings do not contradict each other.
// Its errors and its String and LogValue name the method and the files,
// never a password, token or key. It has no cgo, so a program that only
// talks to NATS can use it.
package natsauth

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/avflow/avflow/pipeline/secret"
)

// Sentinels for errors.Is on the errors of [Config.Options]; each comes
// wrapped in an [*Error] naming the flag.
var (
	// ErrConfig is matched by every error of [Config.Options].
	ErrConfig = errors.New("natsauth: bad NATS credentials or TLS settings")
	// ErrConflict: two ways to authenticate were given.
	ErrConflict = errors.New("only one way to authenticate may be given")
	// ErrMissing: a setting that needs another was given without it.
	ErrMissing = errors.New("missing")
	// ErrBadFile: a file was read but does not hold what the flag takes.
	ErrBadFile = errors.New("not a valid file for this flag")
)

// Error is an error of [Config.Options]: the flag (or flags) at fault, as
// the avflow CLI spells them, the file it names, and the cause.
type Error struct {
	Flag string // "--creds", or "--creds and --token"
	File string // the file the flag names, if any
	Err  error
}

func (e *Error) Error() string {
	s := "natsauth: " + e.Flag
	if e.File != "" {
		s += " " + e.File
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrConfig) true.
func (e *Error) Is(target error) bool { return target == ErrConfig }

// Method is how a connection authenticates.
type Method string

// The methods, one at most per connection.
const (
	MethodNone     Method = "none"     // no credentials
	MethodURL      Method = "url"      // user:password@ or token@ in the server URL
	MethodCreds    Method = "creds"    // a JWT user creds file (operator mode)
	MethodNKey     Method = "nkey"     // an nkey seed file
	MethodPassword Method = "password" // a user and password
	MethodToken    Method = "token"    // a token
)

// Config is how to reach a NATS server: its URL and at most one way to
// authenticate, plus TLS. Empty fields are unset. Paths are used as given.
type Config struct {
	// URL is the server URL (or comma-separated URLs) the options are for;
	// it is only read, to refuse credentials both in it and in a flag.
	URL string

	Creds    string // --creds: a JWT user creds file (JWT and nkey seed)
	NKey     string // --nkey: an nkey user seed file
	User     string // --user, with Password
	Password string // --password
	Token    string // --token

	TLSCA   string // --tls-ca: CA certificates (PEM) to verify the server with; implies TLS
	TLSCert string // --tls-cert: a client certificate (PEM), with TLSKey; implies TLS
	TLSKey  string // --tls-key: the client certificate's private key (PEM)
}

// Method is the way c authenticates (an invalid c may set several: see Options).
func (c Config) Method() Method {
	switch {
	case c.Creds != "":
		return MethodCreds
	case c.NKey != "":
		return MethodNKey
	case c.User != "" || c.Password != "":
		return MethodPassword
	case c.Token != "":
		return MethodToken
	case urlCredentials(c.URL):
		return MethodURL
	}
	return MethodNone
}

// TLS says whether connections use TLS: a tls:// or wss:// URL, a CA or a client certificate.
func (c Config) TLS() bool {
	return c.TLSCA != "" || c.TLSCert != "" || c.TLSKey != "" || hasScheme(c.URL, "tls", "wss")
}

// Options checks c and returns the nats.go options that apply it: an
// [*Error] (matching [ErrConfig]) names the flag and file at fault when
// a file cannot be read or does not hold what the flag takes, when two
// ways to authenticate are given, or when half of a pair is.
func (c Config) Options() ([]nats.Option, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	switch c.Method() {
	case MethodCreds:
		if err := checkCreds(c.Creds); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(c.Creds))
	case MethodNKey:
		if err := readable("--nkey", c.NKey); err != nil {
			return nil, err
		}
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, &Error{"--nkey", c.NKey, fmt.Errorf("%w: %w", ErrBadFile, err)}
		}
		opts = append(opts, o)
	case MethodPassword:
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case MethodToken:
		opts = append(opts, nats.Token(c.Token))
	}
	tlsOpts, err := c.tlsOptions()
	if err != nil {
		return nil, err
	}
	return append(opts, tlsOpts...), nil
}

// check refuses contradictory and incomplete settings.
func (c Config) check() error {
	var ways []string
	for _, w := range []struct {
		set  bool
		flag string
	}{
		{c.Creds != "", "--creds"},
		{c.NKey != "", "--nkey"},
		{c.User != "" || c.Password != "", "--user/--password"},
		{c.Token != "", "--token"},
		{urlCredentials(c.URL), "credentials in the URL " + secret.URL(c.URL)},
	} {
		if w.set {
			ways = append(ways, w.flag)
		}
	}
	if len(ways) > 1 {
		return &Error{Flag: strings.Join(ways, " and "), Err: ErrConflict}
	}
	switch {
	case c.User != "" && c.Password == "":
		return &Error{Flag: "--user " + c.User, Err: fmt.Errorf("%w: --password", ErrMissing)}
	case c.Password != "" && c.User == "":
		return &Error{Flag: "--password", Err: fmt.Errorf("%w: --user", ErrMissing)}
	case c.TLSCert != "" && c.TLSKey == "":
		return &Error{"--tls-cert", c.TLSCert, fmt.Errorf("%w: --tls-key (the certificate's private key)", ErrMissing)}
	case c.TLSKey != "" && c.TLSCert == "":
		return &Error{"--tls-key", c.TLSKey, fmt.Errorf("%w: --tls-cert (the certificate the key belongs to)", ErrMissing)}
	}
	return nil
}

// tlsOptions loads the CA and the client certificate now, so that a bad
// file is reported naming its flag rather than when connecting.
func (c Config) tlsOptions() ([]nats.Option, error) {
	var opts []nats.Option
	if c.TLSCA != "" {
		o, err := loaded("--tls-ca", c.TLSCA, nats.RootCAs(c.TLSCA))
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	if c.TLSCert != "" {
		if err := readable("--tls-key", c.TLSKey); err != nil {
			return nil, err
		}
		o, err := loaded("--tls-cert", c.TLSCert, nats.ClientCert(c.TLSCert, c.TLSKey))
		if err != nil {
			return nil, err
		}
		opts = append(opts, o)
	}
	return opts, nil
}

// loaded applies o, which loads the file a flag names, to a scratch
// nats.Options, and returns it when that works.
func loaded(flag, path string, o nats.Option) (nats.Option, error) {
	if err := readable(flag, path); err != nil {
		return nil, err
	}
	var scratch nats.Options
	if err := o(&scratch); err != nil {
		return nil, &Error{flag, path, fmt.Errorf("%w: %w", ErrBadFile, err)}
	}
	return o, nil
}

// checkCreds reads a creds file: it must hold a user JWT and the seed of
// that user.
func checkCreds(path string) error {
	if err := readable("--creds", path); err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return &Error{"--creds", path, err}
	}
	defer wipe(b)
	bad := func(err error) error {
		return &Error{"--creds", path, fmt.Errorf("%w: want a NATS user creds file (a user JWT and its nkey seed): %w", ErrBadFile, err)}
	}
	token, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return bad(err)
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return bad(err)
	}
	kp, err := jwt.ParseDecoratedUserNKey(b)
	if err != nil {
		return bad(err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return bad(err)
	}
	if pub != claims.Subject {
		return bad(fmt.Errorf("the seed is of user %s, the JWT of user %s", pub, claims.Subject))
	}
	return nil
}

// readable checks that the file a flag names can be read.
func readable(flag, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return &Error{Flag: flag, File: path, Err: err}
	}
	defer f.Close()
	if _, err := f.Read(make([]byte, 1)); errors.Is(err, io.EOF) {
		return &Error{Flag: flag, File: path, Err: fmt.Errorf("%w: the file is empty", ErrBadFile)}
	} else if err != nil { // a folder
		return &Error{Flag: flag, File: path, Err: fmt.Errorf("%w: %w", ErrBadFile, err)}
	}
	return nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// urlCredentials says whether one of the comma-separated URLs holds a user
// (with or without a password: NATS takes a lone name as a token).
func urlCredentials(urls string) bool {
	for _, u := range parseURLs(urls) {
		if u.User != nil {
			return true
		}
	}
	return false
}

func hasScheme(urls string, schemes ...string) bool {
	for _, u := range parseURLs(urls) {
		for _, s := range schemes {
			if strings.EqualFold(u.Scheme, s) {
				return true
			}
		}
	}
	return false
}

// parseURLs parses a comma-separated URL list as nats.Connect does (a
// host:port without a scheme is nats://); unparseable ones are left out.
func parseURLs(urls string) []*url.URL {
	var out []*url.URL
	for _, s := range strings.Split(urls, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "://") {
			s = "nats://" + s
		}
		if u, err := url.Parse(s); err == nil {
			out = append(out, u)
		}
	}
	return out
}

// String describes c for logs and errors: the method, the user name and
// the files, never a password, token or seed; the URL is not part of it.
// A client certificate alone is the connection's credential.
func (c Config) String() string {
	var parts []string
	switch c.Method() {
	case MethodNone:
		if c.TLSCert == "" {
			parts = append(parts, "no credentials")
		}
	case MethodURL:
		parts = append(parts, "credentials in the URL")
	case MethodCreds:
		parts = append(parts, "creds "+c.Creds)
	case MethodNKey:
		parts = append(parts, "nkey "+c.NKey)
	case MethodPassword:
		parts = append(parts, "user "+c.User+" with a password")
	case MethodToken:
		parts = append(parts, "a token")
	}
	if c.TLS() {
		var tls []string
		if c.TLSCA != "" {
			tls = append(tls, "CA "+c.TLSCA)
		}
		if c.TLSCert != "" {
			tls = append(tls, "client certificate "+c.TLSCert)
		} else {
			tls = append(tls, "no client certificate")
		}
		parts = append(parts, "TLS ("+strings.Join(tls, ", ")+")")
	}
	return strings.Join(parts, ", ")
}

// GoString keeps %#v from printing the secrets.
func (c Config) GoString() string { return "natsauth.Config{" + c.String() + "}" }

// LogValue is c as a slog group: auth (the method), user, file, tls,
// tls_ca, tls_cert; never a password, token or seed.
func (c Config) LogValue() slog.Value {
	m := c.Method()
	attrs := []slog.Attr{slog.String("auth", string(m))}
	switch m {
	case MethodCreds:
		attrs = append(attrs, slog.String("file", c.Creds))
	case MethodNKey:
		attrs = append(attrs, slog.String("file", c.NKey))
	case MethodPassword:
		attrs = append(attrs, slog.String("user", c.User))
	}
	attrs = append(attrs, slog.Bool("tls", c.TLS()))
	if c.TLSCA != "" {
		attrs = append(attrs, slog.String("tls_ca", c.TLSCA))
	}
	if c.TLSCert != "" {
		attrs = append(attrs, slog.String("tls_cert", c.TLSCert))
	}
	return slog.GroupValue(attrs...)
}
