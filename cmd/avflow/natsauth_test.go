package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/avflow/avflow/pipeline/e2e"
	"github.com/avflow/avflow/pipeline/natsauth/natsauthtest"
	"github.com/avflow/avflow/pipeline/secret"
)

// The secrets of these tests: none may reach avflow's output.
const (
	natsPassword = "pw-Xq7s3cret"
	natsToken    = "tok-Zr9s3cret"
	wrongSecret  = "wrong-Kp4s3cret"
)

// startNATSConfig starts a real nats-server process on a free loopback
// port with a config file holding conf (authorization, operator, tls).
func startNATSConfig(t *testing.T, conf string) int {
	t.Helper()
	bin := natsServerBin(t)
	dir := t.TempDir()
	_, port := startListening(t, "tcp", func(port int) *exec.Cmd {
		path := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", port))
		writeFile(t, path, []byte(fmt.Sprintf("listen: 127.0.0.1:%d\n%s", port, conf)))
		return exec.Command(bin, "-c", path)
	})
	return port
}

// authRun is one run of avflow against a server that wants credentials.
type authRun struct {
	name  string
	url   string   // with %d for the port
	args  []string // credential and TLS flags
	env   []string // or variables
	cause string   // "": the run works; else it fails, naming the server and this (a regular expression)
}

// TestNATSCredentials runs a small pipeline against nats-server processes
// that want a user and password, a token, an nkey, a JWT (operator mode)
// or a client certificate: it works with the right credentials, from flags
// or variables, and with wrong or missing ones it fails at once, naming
// the server and the cause, with exit 1 and no output file.
func TestNATSCredentials(t *testing.T) {
	e2e.Long(t)
	keys := t.TempDir()
	seed := filepath.Join(keys, "user.nk")
	seedPub := natsauthtest.UserSeed(t, seed)
	otherSeed := filepath.Join(keys, "other.nk")
	natsauthtest.UserSeed(t, otherSeed)
	op := natsauthtest.NewOperator(t)
	creds := op.Creds(t, filepath.Join(keys, "faces.creds"), "faces")
	foreignCreds := natsauthtest.NewOperator(t).Creds(t, filepath.Join(keys, "foreign.creds"), "faces")
	pki := natsauthtest.NewPKI(t, keys)
	otherDir := filepath.Join(keys, "other")
	if err := os.Mkdir(otherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	other := natsauthtest.NewPKI(t, otherDir)

	const plain, tls = "nats://127.0.0.1:%d", "tls://127.0.0.1:%d"
	// What the error says after "failed: ", as regular expressions.
	refused := func(sent string) string {
		return regexp.QuoteMeta("nats: Authorization Violation (credentials sent: " + sent + ")")
	}
	// The server refuses a client certificate after the TLS 1.3 handshake:
	// nats.go reads its alert or finds the connection closed.
	tlsRefused := func(alert, sent string) string {
		return "(remote error: tls: " + alert + "|nats: tls error: connection closed by remote after TLS handshake: [^\n]*) " +
			regexp.QuoteMeta("(credentials sent: "+sent+")")
	}
	unknownCA := func(sent string) string {
		return "nats: tls error: tls: failed to verify certificate: x509: certificate signed by unknown authority[^\n]* " +
			regexp.QuoteMeta("(credentials sent: "+sent+")")
	}
	password := "user alice with a password"
	tests := []struct {
		name   string
		server string
		runs   []authRun
	}{
		{"user and password", fmt.Sprintf("authorization { user: alice, password: %q }", natsPassword), []authRun{
			{"flags", plain, []string{"--user", "alice", "--password", natsPassword}, nil, ""},
			{"variables", plain, nil, []string{"AVFLOW_NATS_USER=alice", "AVFLOW_NATS_PASSWORD=" + natsPassword}, ""},
			{"in the URL", "nats://alice:" + natsPassword + "@127.0.0.1:%d", nil, nil, ""},
			{"wrong password", plain, []string{"--user", "alice", "--password", wrongSecret}, nil, refused(password)},
			{"wrong password in the URL", "nats://alice:" + wrongSecret + "@127.0.0.1:%d", nil, nil, refused("credentials in the URL")},
			{"none", plain, nil, nil, refused("no credentials")},
		}},
		{"token", fmt.Sprintf("authorization { token: %q }", natsToken), []authRun{
			{"flag", plain, []string{"--token", natsToken}, nil, ""},
			{"variable", plain, nil, []string{"AVFLOW_NATS_TOKEN=" + natsToken}, ""},
			{"in the URL", "nats://" + natsToken + "@127.0.0.1:%d", nil, nil, ""},
			{"wrong token", plain, []string{"--token", wrongSecret}, nil, refused("a token")},
			{"none", plain, nil, nil, refused("no credentials")},
		}},
		{"nkey", fmt.Sprintf("authorization { users: [ { nkey: %s } ] }", seedPub), []authRun{
			{"flag", plain, []string{"--nkey", seed}, nil, ""},
			{"variable", plain, nil, []string{"AVFLOW_NATS_NKEY=" + seed}, ""},
			{"another user's seed", plain, []string{"--nkey", otherSeed}, nil, refused("nkey " + otherSeed)},
			{"none", plain, nil, nil, refused("no credentials")},
		}},
		{"JWT creds in operator mode", op.ServerConfig(), []authRun{
			{"flag", plain, []string{"--creds", creds}, nil, ""},
			{"variable", plain, nil, []string{"AVFLOW_NATS_CREDS=" + creds}, ""},
			{"another operator's user", plain, []string{"--creds", foreignCreds}, nil, refused("creds " + foreignCreds)},
			{"none", plain, nil, nil, refused("no credentials")},
		}},
		{"TLS with a client certificate", fmt.Sprintf("tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true }", pki.ServerCert, pki.ServerKey, pki.CA), []authRun{
			{"flags", tls, []string{"--tls-ca", pki.CA, "--tls-cert", pki.ClientCert, "--tls-key", pki.ClientKey}, nil, ""},
			{"variables", tls, nil, []string{"AVFLOW_NATS_TLS_CA=" + pki.CA, "AVFLOW_NATS_TLS_CERT=" + pki.ClientCert, "AVFLOW_NATS_TLS_KEY=" + pki.ClientKey}, ""},
			{"a nats URL: the CA implies TLS", plain, []string{"--tls-ca", pki.CA, "--tls-cert", pki.ClientCert, "--tls-key", pki.ClientKey}, nil, ""},
			{"no client certificate", tls, []string{"--tls-ca", pki.CA}, nil,
				tlsRefused("certificate required", "no credentials, TLS (CA "+pki.CA+", no client certificate)")},
			{"another CA's client certificate", tls, []string{"--tls-ca", pki.CA, "--tls-cert", other.ClientCert, "--tls-key", other.ClientKey}, nil,
				tlsRefused("unknown certificate authority", "TLS (CA "+pki.CA+", client certificate "+other.ClientCert+")")},
			{"another CA", tls, []string{"--tls-ca", other.CA, "--tls-cert", pki.ClientCert, "--tls-key", pki.ClientKey}, nil,
				unknownCA("TLS (CA " + other.CA + ", client certificate " + pki.ClientCert + ")")},
			{"nothing", plain, nil, nil, unknownCA("no credentials")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := startNATSConfig(t, tt.server)
			for _, run := range tt.runs {
				t.Run(run.name, func(t *testing.T) {
					runAuth(t, fmt.Sprintf(run.url, port), run, "--log-level", "debug")
				})
			}
		})
	}
}

// runAuth runs the small pipeline against url with the global flags and
// the run's flags and variables, and checks its end: an MKV of 25 frames,
// or a failure within seconds naming the server and the cause, with
// nothing left that looks finished. No secret may be shown in either case.
func runAuth(t *testing.T, url string, run authRun, global ...string) {
	t.Helper()
	p, out := authPipeline(t)
	args := append(append(append(global, "run", "--nats", url), run.args...), p)
	avf := startAvflow(t, run.env, args...)
	limit := time.Minute
	if run.cause != "" {
		limit = 15 * time.Second // never a hang: nats.go gives up after 5 s
	}
	code := avf.wait(t, limit)
	log := avf.out.String()
	for _, s := range []string{natsPassword, natsToken, wrongSecret} {
		if strings.Contains(log, s) {
			t.Errorf("secret %q shown:\n%s", s, log)
		}
	}
	if run.cause == "" {
		if code != 0 {
			t.Fatalf("exit %d, want 0:\n%s", code, log)
		}
		if v := probe(t, out)["video"]; v.CodecName != "h264" || v.Width != 320 || v.frames() != 25 {
			t.Errorf("output video %+v, want 25 h264 320x240 frames", v)
		}
		return
	}
	want := regexp.MustCompile("(?m)^" + regexp.QuoteMeta("avflow: transport: connecting to NATS at "+secret.URL(url)+" failed: ") + run.cause + "$")
	if code != exitRun || !want.MatchString(log) {
		t.Errorf("exit %d, want %d with a line matching %s:\n%s", code, exitRun, want, log)
	}
	assertNoOutput(t, filepath.Dir(out))
}

// authPipeline writes a pipeline that encodes 25 frames of a test pattern
// to an MKV file in a folder of its own, and returns both paths.
func authPipeline(t *testing.T) (pipelineFile, out string) {
	t.Helper()
	out = filepath.Join(t.TempDir(), "out.mkv")
	return writePipeline(t, t.TempDir(), fmt.Sprintf(`
name: auth
stages:
  - {name: src, kind: source, params: {url: "lavfi:testsrc2=size=320x240:rate=25", max_frames: 25}}
  - {name: vdec, kind: decode, inputs: [src.video]}
  - {name: venc, kind: encode, inputs: [vdec], params: {codec: libx264, preset: ultrafast}}
  - {name: out, kind: sink, inputs: [venc], params: {path: %q}}
`, out)), out
}

// TestNATSFlagMistakes: a credential or TLS flag that cannot be used is a
// usage error (exit 2) naming the flag and file, found before connecting.
func TestNATSFlagMistakes(t *testing.T) {
	e2e.Long(t)
	dir := t.TempDir()
	missing := filepath.Join(dir, "faces.creds")
	cert := filepath.Join(dir, "client.pem")
	writeFile(t, cert, []byte("-----BEGIN CERTIFICATE-----\n"))
	// Nothing listens there: a run that got as far as connecting fails with exit 1.
	url := fmt.Sprintf("nats://127.0.0.1:%d", unusedPort(t, "tcp"))
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"creds missing", []string{"--nats", url, "--creds", missing}, nil,
			fmt.Sprintf("avflow run: natsauth: --creds %s: open %[1]s: no such file or directory", missing)},
		{"creds missing, from the variable", []string{"--nats", url}, []string{"AVFLOW_NATS_CREDS=" + missing},
			fmt.Sprintf("avflow run: natsauth: --creds %s: open %[1]s: no such file or directory", missing)},
		{"no server", []string{"--token", natsToken, "--tls-ca", cert}, nil,
			"avflow run: --token, --tls-ca: no NATS server to use with it: give its URL with --nats (or AVFLOW_NATS_URL); the embedded server takes no credentials"},
		{"certificate without key", []string{"--nats", url, "--tls-cert", cert}, nil,
			fmt.Sprintf("avflow run: natsauth: --tls-cert %s: missing: --tls-key (the certificate's private key)", cert)},
		{"creds and user", []string{"--nats", url, "--user", "alice", "--password", natsPassword}, []string{"AVFLOW_NATS_CREDS=" + missing},
			"avflow run: natsauth: --creds and --user/--password: only one way to authenticate may be given"},
		{"token and a password in the URL", []string{"--nats", "nats://alice:" + natsPassword + "@127.0.0.1:4222", "--token", natsToken}, nil,
			"avflow run: natsauth: --token and credentials in the URL nats://alice:xxxxx@127.0.0.1:4222: only one way to authenticate may be given"},
		{"password without user", []string{"--nats", url}, []string{"AVFLOW_NATS_PASSWORD=" + natsPassword},
			"avflow run: natsauth: --password: missing: --user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, out := authPipeline(t)
			r := avflow(t, tt.env, append(append([]string{"run"}, tt.args...), p)...)
			if r.code != exitInvalid || strings.TrimSpace(r.stderr) != tt.want {
				t.Errorf("exit %d, want %d with the one line\n%s\ngot:\n%s", r.code, exitInvalid, tt.want, r.stderr)
			}
			if strings.Contains(r.stdout+r.stderr, natsPassword) || strings.Contains(r.stdout+r.stderr, natsToken) {
				t.Errorf("a secret is shown:\n%s", r.stderr)
			}
			assertNoOutput(t, filepath.Dir(out))
		})
	}
}

// TestNATSSecretsNotShown: the password and the token never reach
// avflow's output, whether the server takes or refuses them, given as
// flags or variables, in text or JSON logs at debug level, nor in
// `avflow run --help` with the variables set.
func TestNATSSecretsNotShown(t *testing.T) {
	e2e.Long(t)
	userPort := startNATSConfig(t, fmt.Sprintf("authorization { user: alice, password: %q }", natsPassword))
	tokenPort := startNATSConfig(t, fmt.Sprintf("authorization { token: %q }", natsToken))
	refused := regexp.QuoteMeta("nats: Authorization Violation (credentials sent: ")
	tests := []struct {
		port int
		run  authRun
	}{
		{userPort, authRun{"right password", "nats://127.0.0.1:%d", []string{"--user", "alice", "--password", natsPassword}, nil, ""}},
		{userPort, authRun{"right password in the variable", "nats://127.0.0.1:%d", []string{"--user", "alice"}, []string{"AVFLOW_NATS_PASSWORD=" + natsPassword}, ""}},
		{userPort, authRun{"wrong password", "nats://127.0.0.1:%d", []string{"--user", "alice", "--password", wrongSecret}, nil, refused + ".*"}},
		{userPort, authRun{"wrong password in the variable", "nats://127.0.0.1:%d", []string{"--user", "alice"}, []string{"AVFLOW_NATS_PASSWORD=" + wrongSecret}, refused + ".*"}},
		{tokenPort, authRun{"right token", "nats://127.0.0.1:%d", []string{"--token", natsToken}, nil, ""}},
		{tokenPort, authRun{"wrong token in the variable", "nats://127.0.0.1:%d", nil, []string{"AVFLOW_NATS_TOKEN=" + wrongSecret}, refused + ".*"}},
		{tokenPort, authRun{"wrong token", "nats://127.0.0.1:%d", []string{"--token", wrongSecret}, nil, refused + ".*"}},
	}
	for _, tt := range tests {
		t.Run(tt.run.name, func(t *testing.T) {
			// runAuth fails the test when a secret is shown.
			runAuth(t, fmt.Sprintf(tt.run.url, tt.port), tt.run, "--log-level", "debug", "--log-format", "json")
		})
	}
	t.Run("service info and stats", func(t *testing.T) {
		// Every stage's micro service, asked by a client of the server;
		// the URL is what a careless metadata entry would show.
		run := startAvflow(t, nil, "run", "--nats", fmt.Sprintf("nats://alice:%s@127.0.0.1:%d", natsPassword, userPort),
			writePipeline(t, t.TempDir(), liveToMP4))
		run.waitLog(t, "output opened", 30*time.Second)
		nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", userPort), nats.UserInfo("alice", natsPassword))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		for _, subj := range []string{"$SRV.INFO", "$SRV.STATS"} {
			got := ask(t, nc, subj, 4) // the four stages of liveToMP4
			if !strings.Contains(got, `"stage":"venc"`) && subj == "$SRV.INFO" {
				t.Errorf("%s answers lack the stages' metadata:\n%s", subj, got)
			}
			if strings.Contains(got, natsPassword) {
				t.Errorf("%s shows the password:\n%s", subj, got)
			}
		}
		_ = run.cmd.Process.Signal(syscall.SIGINT)
		if code := run.wait(t, 30*time.Second); code != 0 {
			t.Errorf("exit %d:\n%s", code, run.out)
		}
		if strings.Contains(run.out.String(), natsPassword) {
			t.Errorf("the password is shown:\n%s", run.out)
		}
	})
	t.Run("help", func(t *testing.T) {
		r := avflow(t, []string{"AVFLOW_NATS_PASSWORD=" + natsPassword, "AVFLOW_NATS_TOKEN=" + natsToken}, "run", "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "--password PASSWORD") || !strings.Contains(r.stdout, "$AVFLOW_NATS_TOKEN") {
			t.Errorf("exit %d, help lacks the NATS flags:\n%s%s", r.code, r.stdout, r.stderr)
		}
		for _, s := range []string{natsPassword, natsToken} {
			if strings.Contains(r.stdout+r.stderr, s) {
				t.Errorf("help shows %q:\n%s", s, r.stdout)
			}
		}
	})
}

// ask sends a request to every micro service on subj and returns the
// first n answers.
func ask(t *testing.T, nc *nats.Conn, subj string, n int) string {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < n {
		msg, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("%s: %d answers of %d: %v", subj, len(got), n, err)
		}
		got = append(got, string(msg.Data))
	}
	return strings.Join(got, "\n")
}
