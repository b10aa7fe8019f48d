// Package all registers every built-in stage kind. Import it for its side effect:
//
//	import _ "github.com/avflow/avflow/stages/all"
package all

import (
	_ "github.com/avflow/avflow/stages/decode"
	_ "github.com/avflow/avflow/stages/draw"
	_ "github.com/avflow/avflow/stages/encode"
	_ "github.com/avflow/avflow/stages/filter"
	_ "github.com/avflow/avflow/stages/infer"
	_ "github.com/avflow/avflow/stages/pace"
	_ "github.com/avflow/avflow/stages/personalise"
	_ "github.com/avflow/avflow/stages/redact"
	_ "github.com/avflow/avflow/stages/render"
	_ "github.com/avflow/avflow/stages/sink"
	_ "github.com/avflow/avflow/stages/source"
	_ "github.com/avflow/avflow/stages/track"
)
