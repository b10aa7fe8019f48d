package main

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"

	"github.com/avflow/avflow/pipeline/natsauth"
)

const natsCategory = "NATS credentials and TLS (for --nats)"

// natsFlags are the credential and TLS flags of every command that talks
// to a NATS server, each also read from an environment variable.
func natsFlags() []cli.Flag {
	flag := func(name, env, usage string) cli.Flag {
		return &cli.StringFlag{Name: name, Usage: usage, EnvVars: []string{env}, Category: natsCategory}
	}
	return []cli.Flag{
		flag("creds", "AVFLOW_NATS_CREDS", "NATS user credentials `FILE` (a user JWT and its nkey seed, as nsc writes it)"),
		flag("nkey", "AVFLOW_NATS_NKEY", "NATS nkey user seed `FILE`"),
		flag("user", "AVFLOW_NATS_USER", "NATS user `NAME`, with --password"),
		flag("password", "AVFLOW_NATS_PASSWORD", "the `PASSWORD` of --user (the variable keeps it out of the process list)"),
		flag("token", "AVFLOW_NATS_TOKEN", "NATS `TOKEN` (the variable keeps it out of the process list)"),
		flag("tls-ca", "AVFLOW_NATS_TLS_CA", "CA certificates `FILE` (PEM) that the server's certificate is checked with; implies TLS"),
		flag("tls-cert", "AVFLOW_NATS_TLS_CERT", "client certificate `FILE` (PEM), with --tls-key; implies TLS"),
		flag("tls-key", "AVFLOW_NATS_TLS_KEY", "private key `FILE` (PEM) of --tls-cert"),
	}
}

// natsAuth is the natsauth.Config of the flags of natsFlags, for the
// server at url ("" when there is none).
func natsAuth(c *cli.Context, url string) natsauth.Config {
	return natsauth.Config{
		URL:      url,
		Creds:    c.String("creds"),
		NKey:     c.String("nkey"),
		User:     c.String("user"),
		Password: c.String("password"),
		Token:    c.String("token"),
		TLSCA:    c.String("tls-ca"),
		TLSCert:  c.String("tls-cert"),
		TLSKey:   c.String("tls-key"),
	}
}

// natsOptions checks the credential and TLS flags for the server at url
// and returns their options; a mistake is a usage error (exit 2), and so
// is a flag given without a server to use it with (the embedded server
// takes no credentials).
func natsOptions(c *cli.Context, url string) (natsauth.Config, []nats.Option, error) {
	cfg := natsAuth(c, url)
	if url == "" {
		if set := setNATSFlags(c); len(set) > 0 {
			return cfg, nil, cli.Exit(fmt.Sprintf("avflow %s: %s: no NATS server to use with it: give its URL with --nats (or AVFLOW_NATS_URL); the embedded server takes no credentials",
				c.Command.Name, strings.Join(set, ", ")), exitInvalid)
		}
		return cfg, nil, nil
	}
	opts, err := cfg.Options()
	if err != nil {
		return cfg, nil, cli.Exit("avflow "+c.Command.Name+": "+err.Error(), exitInvalid)
	}
	return cfg, opts, nil
}

// setNATSFlags names the flags of natsFlags that are set (on the command
// line or from their variable).
func setNATSFlags(c *cli.Context) []string {
	var set []string
	for _, f := range natsFlags() {
		if name := f.Names()[0]; c.String(name) != "" {
			set = append(set, "--"+name)
		}
	}
	return set
}

// natsAuthError adds to an error of a run whose credentials or TLS
// handshake the server refused what the run sent (never the secret).
func natsAuthError(err error, cfg natsauth.Config) error {
	// crypto/tls reports the server's TLS alert as a "remote error".
	var op *net.OpError
	refused := errors.As(err, &op) && op.Op == "remote error" || errors.Is(err, nats.ErrTLS)
	for _, e := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		refused = refused || errors.Is(err, e)
	}
	if refused {
		return fmt.Errorf("%w (credentials sent: %s)", err, cfg)
	}
	return err
}
