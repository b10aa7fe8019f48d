package pipeline

import "github.com/avflow/avflow/pipeline/secret"

// RedactURL returns s with the credentials of every URL in it hidden, for
// logs and error messages (see [secret.URL]).
func RedactURL(s string) string { return secret.URL(s) }
