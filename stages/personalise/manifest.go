package personalise

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/avflow/avflow/pipeline/viewers"
)

// The manifest is the stage's to write, but anyone who may write the
// bucket may write it too: a forged entry would send a viewer's player
// to someone else's playlist. The stage watches the manifest's keys and
// puts back its own entry over any other write (or removal), and removes
// the entries of viewers it does not know (Store.WatchManifest tells it
// of every write).

// putEntry writes a viewer's manifest entry and notes its revision: a
// write at or below it is the stage's own (or undone by it already).
func (st *state) putEntry(ctx context.Context, e viewers.Entry) error {
	rev, err := st.s.store.SetEntry(ctx, e)
	if err != nil {
		return err
	}
	st.revs[e.Viewer] = rev
	return nil
}

// manifestWritten handles one write to a manifest key: the stage's own
// (or one it has written over since) is left alone, anyone else's undone.
func (st *state) manifestWritten(ctx context.Context, ent jetstream.KeyValueEntry) {
	id := strings.TrimPrefix(ent.Key(), viewers.ManifestKey(""))
	defer st.forgetLeft(ent.Revision())
	if ent.Revision() <= st.revs[id] {
		return
	}
	mine, known := st.written[id]
	if !known && (ent.Operation() != jetstream.KeyValuePut || ent.Revision() <= st.left[id]) {
		return // the stage removed it, or wrote it before the viewer left
	}
	st.s.forged.Add(1)
	if !known {
		st.s.log.Warn("someone else wrote a manifest entry of a viewer the stage does not know: removed", "key", ent.Key())
		if err := st.s.store.DropEntry(ctx, id); err != nil && ctx.Err() == nil {
			st.s.log.Warn("removing a forged manifest entry failed", "key", ent.Key(), "error", err)
		}
		return
	}
	st.s.log.Warn("someone else wrote a viewer's manifest entry: put back", "viewer", id)
	st.entry(ctx, mine)
}

// forgetLeft forgets the removed viewers whose last entry the watch has
// passed (it is at rev).
func (st *state) forgetLeft(rev uint64) {
	for id, r := range st.left {
		if r < rev {
			delete(st.left, id)
		}
	}
}
