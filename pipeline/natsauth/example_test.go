package natsauth_test

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/avflow/avflow/pipeline/natsauth"
)

// Check the settings, log how the connection authenticates (never the
// secret), and connect with the options.
func ExampleConfig_Options() {
	cfg := natsauth.Config{URL: "tls://nats.example:4222", User: "avflow", Password: "s3cret"}
	opts, err := cfg.Options()
	if err != nil {
		fmt.Println(err)
		return
	}
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // a fixed output for the example
			}
			return a
		},
	}))
	log.Info("connecting to NATS", "nats", cfg)
	fmt.Println(cfg)
	// Then: nc, err := nats.Connect(cfg.URL, opts...)
	_ = opts

	// A file that is missing is named with its flag.
	_, err = natsauth.Config{Creds: "faces.creds"}.Options()
	fmt.Println(err)
	// Output:
	// level=INFO msg="connecting to NATS" nats.auth=password nats.user=avflow nats.tls=true
	// user avflow with a password, TLS (no client certificate)
	// natsauth: --creds faces.creds: open faces.creds: no such file or directory
}
