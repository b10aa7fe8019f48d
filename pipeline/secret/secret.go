// Package secret hides credentials in text bound for logs and error
// messages: passwords and tokens in URLs, SRT passphrases, RTMP stream keys.
// It imports nothing of avflow, so every package (FFmpeg's log routing in
// codecs, the runner, the stages, the CLI) uses the same rules.
package secret

import (
	"net/url"
	"regexp"
	"strings"
)

// redacted replaces a secret in a URL.
const redacted = "xxxxx"

// secretParams are query parameters that carry credentials in the URLs
// avflow reads and writes (SRT passphrases, signed HLS/HTTP URLs, tokens).
var secretParams = map[string]bool{
	"passphrase": true, "password": true, "pass": true, "pwd": true, "token": true,
	"access_token": true, "auth": true, "key": true, "secret": true, "sig": true,
	"signature": true, "streamid": true, "x-amz-signature": true, "x-amz-credential": true,
}

// URL returns s with the credentials of every URL in it hidden, for
// logs and error messages: the password of user:password@ (a lone user
// name too, since NATS takes a token there), query parameters that carry
// secrets (SRT passphrase, tokens, signatures), and the stream key of an
// RTMP URL (the path after the application). A comma-separated list of
// URLs, as NATS takes, is redacted URL by URL. Text that is not a URL
// comes back as it is.
func URL(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = redactOne(p)
	}
	return strings.Join(parts, ",")
}

func redactOne(s string) string {
	s = strings.TrimSpace(s)
	if q := strings.IndexByte(s, '?'); q >= 0 {
		// Media URLs have no fragments: a '#' in the query is data (SRT's
		// access-control stream id "#!::r=live/key,m=publish").
		s = s[:q] + strings.ReplaceAll(s[q:], "#", "%23")
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		if i := strings.Index(s, "://"); i >= 0 {
			if at := strings.LastIndex(s, "@"); at > i {
				// Unparseable but with credentials: keep only the scheme and host.
				return s[:i+3] + redacted + s[at:]
			}
		}
		return s
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), redacted)
		} else {
			u.User = url.User(redacted)
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if secretParams[strings.ToLower(k)] {
				q.Set(k, redacted)
			}
		}
		u.RawQuery = q.Encode()
	}
	if strings.HasPrefix(u.Scheme, "rtmp") {
		// rtmp://host/app/streamkey: the key is the publishing credential.
		segs := strings.Split(strings.Trim(u.Path, "/"), "/")
		if len(segs) >= 2 {
			segs[len(segs)-1] = redacted
			u.Path = "/" + strings.Join(segs, "/")
			u.RawPath = ""
		}
	}
	return u.String()
}

// urlInText finds URLs inside free text (log messages, errors, FFmpeg's
// own lines such as "Connection to srt://host?passphrase=... failed").
var urlInText = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.\-]*://[^\s"'<>]+`)

// Text returns s with every URL in it redacted as [URL] does.
func Text(s string) string {
	if !strings.Contains(s, "://") {
		return s
	}
	return urlInText.ReplaceAllStringFunc(s, func(u string) string {
		// Punctuation after a URL ("failed: rtmp://h/app/key: refused") is the text's.
		url := strings.TrimRight(u, ".,:;)]}!?")
		return URL(url) + u[len(url):]
	})
}
