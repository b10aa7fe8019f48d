package pipeline

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
)

// A server that hangs up at once: connecting fails, and the error names
// the server without its password.
func TestConnectErrorHidesPassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	url := "nats://u:s3cret@" + ln.Addr().String()
	_, err = connect(nil, url, nil, "test", connEvents{err: func(*nats.Subscription, error) {}, lost: func(*nats.Conn, error) {}, back: func(*nats.Conn) {}})
	if err == nil {
		t.Fatal("connected to a server that hangs up")
	}
	if strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("error %q: want the address without the password", err)
	}
	if !errors.Is(err, ErrTransport) {
		t.Fatalf("error %q does not wrap ErrTransport", err)
	}
}
