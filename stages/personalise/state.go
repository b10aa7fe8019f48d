package personalise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/avflow/avflow/pipeline"
	"github.com/avflow/avflow/pipeline/viewers"
)

// state is what the watcher knows: the viewers and the live variants.
// Only the watcher goroutine touches it.
type state struct {
	s        *Stage
	viewers  map[string]*viewer
	variants map[string]*variant
	written  map[string]viewers.Entry // each viewer's manifest entry as the stage last wrote it
	revs     map[string]uint64        // the bucket's revision of the stage's last write of each
	// left is, for each viewer removed lately, the revision of the
	// stage's last write of its entry: a write at or below it that the
	// watch brings late is the stage's own. Kept until the watch has
	// passed it (it brings writes in revision order), so its size is
	// what the watch lags, however many viewers come and go.
	left map[string]uint64
}

type viewer struct {
	profile *viewers.Profile
	variant string // its variant's key; "" when refused
	waiting bool   // refused for max_variants: joins when a variant ends
}

// variant is one look and its branch in the graph.
type variant struct {
	key      string
	members  map[string]bool
	stages   []string
	playlist string // the file
	url      string // what the manifest says
	push     string
	live     bool // the playlist has been written
	leaving  bool // its last viewer left before it was live: removed once it is
	look     *viewers.Profile
	textErr  string // why an overlay did not render on a recent frame
}

func newState(s *Stage) *state {
	return &state{s: s, viewers: map[string]*viewer{}, variants: map[string]*variant{}, written: map[string]viewers.Entry{}, revs: map[string]uint64{},
		left: map[string]uint64{}}
}

// watch follows the bucket once the graph runs, until the stage closes.
func (s *Stage) watch(ctx context.Context) {
	defer close(s.done)
	select {
	case <-s.started:
	case <-ctx.Done():
		return
	}
	defer s.state.end()
	for ctx.Err() == nil {
		why := s.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		// The bucket went away (deleted by someone) or was made again
		// without its bounds: the variants go on as they are; the bucket
		// is made again (or bounded), with the profiles and the manifest
		// this stage knows, and watched again.
		s.log.Error("the viewer bucket went away or changed while the pipeline ran: making it again with the viewers it held", "bucket", viewers.Bucket(s.in.Pipeline), "why", why)
		s.restoreUntilDone(ctx)
	}
}

// restoreUntilDone restores the bucket, again every 2 s until it has
// all the stage knows (a restore that failed half way, followed, would
// leave the viewers after the failure without their entries for good),
// or ctx ends.
func (s *Stage) restoreUntilDone(ctx context.Context) {
	for {
		err := s.restore(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		s.log.Error("the viewer bucket could not be made again: viewers cannot change until it is", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// errWatchEnded: a watch of the bucket ended (the bucket was deleted).
var errWatchEnded = errors.New("the bucket's watch ended")

// follow applies the bucket's changes until ctx ends or the bucket goes
// or changes; it returns why it stopped.
func (s *Stage) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changes, _, err := s.store.Watch(wctx)
	if err != nil {
		return fmt.Errorf("watching the viewer bucket failed: %w", err)
	}
	manifest, err := s.store.WatchManifest(wctx)
	if err != nil {
		return fmt.Errorf("watching the viewer bucket's manifest failed: %w", err)
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastAlive := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case c, ok := <-changes:
			if !ok {
				return errWatchEnded
			}
			s.state.apply(ctx, c)
		case ent, ok := <-manifest:
			if !ok {
				return errWatchEnded
			}
			s.state.manifestWritten(ctx, ent)
		case <-tick.C:
			s.state.poll(ctx)
			if time.Since(lastAlive) > time.Second {
				lastAlive = time.Now()
				if err := s.store.Alive(ctx); err != nil && ctx.Err() == nil {
					return err
				}
			}
		case h := <-s.hud:
			s.state.checkTexts(ctx, h)
		case f := <-s.failures:
			s.state.branchFailed(ctx, f)
		}
	}
}

// restore makes the bucket again (or bounds it) and writes back what
// the stage knows: each viewer's profile, unless a client has written or
// removed it in the bucket since it was made (the watch brings that
// change: putting the profile back would undo it), and each viewer's
// manifest entry.
func (s *Stage) restore(ctx context.Context) error {
	if err := s.store.Recreate(ctx); err != nil {
		return err
	}
	// A new bucket counts its revisions from 1: the notes of the stage's
	// writes are made again by the writes below.
	clear(s.state.left)
	clear(s.state.revs)
	back, kept := 0, []string{}
	for _, id := range slices.Sorted(maps.Keys(s.state.viewers)) {
		if p := s.state.viewers[id].profile; p != nil {
			put, err := s.store.PutBack(ctx, p)
			if err != nil {
				return err
			}
			if put {
				back++
			} else {
				kept = append(kept, id)
			}
		}
		if e, ok := s.state.written[id]; ok {
			s.state.entry(ctx, e)
		}
	}
	s.log.Info("viewer bucket restored", "bucket", viewers.Bucket(s.in.Pipeline), "profiles_put_back", back, "changed_meanwhile", len(kept),
		"changed_first", kept[:min(len(kept), 10)])
	return nil
}

// apply handles one profile written or removed.
func (st *state) apply(ctx context.Context, c viewers.Change) {
	switch {
	case c.Removed:
		if _, ok := st.viewers[c.ID]; !ok {
			return
		}
		st.leave(ctx, c.ID)
		delete(st.viewers, c.ID)
		delete(st.written, c.ID)
		st.left[c.ID] = st.revs[c.ID]
		delete(st.revs, c.ID)
		if err := st.s.store.DropEntry(ctx, c.ID); err != nil {
			st.s.log.Warn("removing a viewer's manifest entry failed", "viewer", c.ID, "error", err)
		}
		st.s.log.Info("viewer left", "viewer", c.ID)
	case c.Err != nil:
		st.refuse(ctx, c.ID, nil, c.Err.Error())
	default:
		st.join(ctx, c.Profile)
	}
}

// join puts a viewer in the variant of their look, adding it if needed.
func (st *state) join(ctx context.Context, p *viewers.Profile) {
	key, err := p.VariantKey() // the profile was checked as it was read (viewers.DecodeAs)
	if err != nil {
		st.refuse(ctx, p.ID, p, err.Error())
		return
	}
	if cur := st.viewers[p.ID]; cur != nil && cur.variant == key {
		cur.profile = p
		st.write(ctx, p.ID)
		return
	}
	st.leave(ctx, p.ID)
	v := st.variants[key]
	if v != nil {
		v.leaving = false
	}
	if v == nil {
		if err := st.s.checkImages(p); err != nil {
			st.refuse(ctx, p.ID, p, err.Error())
			return
		}
		if max := st.s.in.Params.Int("max_variants"); len(st.variants) >= max {
			st.refuse(ctx, p.ID, p, fmt.Sprintf("this look would be a new variant, and the pipeline has %d, its max_variants: choose the look of a viewer who is watching, or wait: it starts when a variant ends", max))
			st.viewers[p.ID].waiting = true
			return
		}
		if v, err = st.add(ctx, key, p); err != nil {
			st.refuse(ctx, p.ID, p, err.Error())
			return
		}
	}
	v.members[p.ID] = true
	st.viewers[p.ID] = &viewer{profile: p, variant: key}
	st.s.log.Info("viewer joined", "viewer", p.ID, "variant", key, "viewers", len(v.members))
	st.write(ctx, p.ID)
}

// checkImages says which of the look's overlay images cannot be drawn:
// outside the pipeline's folder, missing, or not a picture.
func (s *Stage) checkImages(p *viewers.Profile) error {
	for i, o := range p.Overlays {
		if o.Image == "" {
			continue
		}
		path, err := s.imagePath(o.Image)
		if err == nil {
			err = checkImage(path)
		}
		if err != nil {
			return fmt.Errorf("overlays[%d].image: %w", i, err)
		}
	}
	return nil
}

// refuse records a viewer who gets no output, and why.
func (st *state) refuse(ctx context.Context, id string, p *viewers.Profile, why string) {
	st.leave(ctx, id)
	st.viewers[id] = &viewer{profile: p}
	st.s.refused.Add(1)
	st.s.log.Warn("viewer refused", "viewer", id, "why", why)
	st.entry(ctx, viewers.Entry{Viewer: id, State: viewers.StateRefused, Error: why})
}

// leave takes a viewer out of their variant, removing it when it was its
// last viewer.
func (st *state) leave(ctx context.Context, id string) {
	cur := st.viewers[id]
	if cur == nil || cur.variant == "" {
		return
	}
	v := st.variants[cur.variant]
	cur.variant = ""
	if v == nil {
		return
	}
	delete(v.members, id)
	if len(v.members) > 0 {
		return
	}
	if !v.live {
		// Its sink has written nothing yet: ended now it would fail with
		// "no input sent any packet", and the run with it. It goes once
		// its playlist is there (poll), still counted in max_variants so
		// that churn cannot pile them up, and taken back by a viewer of
		// its look who comes before that.
		v.leaving = true
		return
	}
	st.retire(ctx, v)
}

// retire removes a variant that has no viewers left, and its branch.
func (st *state) retire(ctx context.Context, v *variant) {
	delete(st.variants, v.key)
	st.s.variants.Store(int64(len(st.variants)))
	if err := st.s.in.Graph.RemoveStages(ctx, v.stages...); err != nil && ctx.Err() == nil {
		st.s.log.Error("removing a variant's branch failed", "variant", v.key, "error", err)
		return
	}
	st.s.removed.Add(1)
	st.s.log.Info("variant removed: its last viewer left", "variant", v.key)
	st.admit(ctx)
}

// admit lets the viewers refused for max_variants join, in the order of
// their ids, while there is room.
func (st *state) admit(ctx context.Context) {
	max := st.s.in.Params.Int("max_variants")
	for _, id := range slices.Sorted(maps.Keys(st.viewers)) {
		if len(st.variants) >= max {
			return
		}
		if cur := st.viewers[id]; cur.waiting && cur.profile != nil {
			st.join(ctx, cur.profile)
		}
	}
}

// branchFailed removes the variant a failed stage was part of; its
// viewers are refused with the reason (their profile, changed, may try
// again). No other variant is touched.
func (st *state) branchFailed(ctx context.Context, f branchFailure) {
	var v *variant
	for _, c := range st.variants {
		if slices.Contains(c.stages, f.stage) {
			v = c
		}
	}
	if v == nil {
		return
	}
	delete(st.variants, v.key)
	st.s.variants.Store(int64(len(st.variants)))
	if err := st.s.in.Graph.RemoveStages(ctx, v.stages...); err != nil && ctx.Err() == nil {
		st.s.log.Error("removing a failed variant's branch failed", "variant", v.key, "error", err)
	}
	st.s.removed.Add(1)
	why := fmt.Sprintf("the variant's branch failed: %v", f.err)
	for _, id := range slices.Sorted(maps.Keys(v.members)) {
		st.viewers[id].variant = ""
		st.refuse(ctx, id, st.viewers[id].profile, why)
	}
	st.admit(ctx)
}

// write sets a viewer's manifest entry from what the state knows.
func (st *state) write(ctx context.Context, id string) {
	cur := st.viewers[id]
	if cur == nil || cur.variant == "" {
		return
	}
	v := st.variants[cur.variant]
	e := viewers.Entry{Viewer: id, Variant: v.key, Playlist: v.url, Push: v.push, State: viewers.StateStarting, Error: v.textErr}
	if v.live {
		e.State = viewers.StateLive
	}
	st.entry(ctx, e)
}

func (st *state) entry(ctx context.Context, e viewers.Entry) {
	st.written[e.Viewer] = e
	if err := st.putEntry(ctx, e); err != nil && ctx.Err() == nil {
		st.s.log.Warn("writing a viewer's manifest entry failed", "viewer", e.Viewer, "error", err)
	}
}

// poll marks the variants whose playlist has appeared as live.
func (st *state) poll(ctx context.Context) {
	for _, v := range st.variants {
		if v.live {
			continue
		}
		if _, err := os.Stat(v.playlist); err != nil {
			continue
		}
		v.live = true
		st.s.log.Info("variant live", "variant", v.key, "playlist", v.playlist)
		if v.leaving {
			st.retire(ctx, v)
			continue
		}
		st.writeMembers(ctx, v)
	}
}

func (st *state) writeMembers(ctx context.Context, v *variant) {
	for _, id := range slices.Sorted(maps.Keys(v.members)) {
		st.write(ctx, id)
	}
}

// checkTexts renders each variant's text overlays over a recent frame:
// a template that fails there (HUD text the frame lacks) is put in its
// viewers' entries, and taken out once it renders again.
func (st *state) checkTexts(ctx context.Context, h hudCheck) {
	for _, v := range st.variants {
		why := ""
		if _, err := v.look.Texts(h.frame); err != nil {
			why = fmt.Sprintf("on the frame at %s: %v", h.at.Round(time.Millisecond), err)
		}
		if (why == "") == (v.textErr == "") {
			continue // unchanged (a new failure's text is not news)
		}
		v.textErr = why
		st.writeMembers(ctx, v)
	}
}

// end marks every viewer's entry ended, once the stage closes.
func (st *state) end() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, id := range slices.Sorted(maps.Keys(st.viewers)) {
		cur := st.viewers[id]
		if cur.variant == "" {
			continue
		}
		v := st.variants[cur.variant]
		st.entry(ctx, viewers.Entry{Viewer: id, Variant: v.key, Playlist: v.url, Push: v.push, State: viewers.StateEnded})
	}
}

// add adds a variant's branch to the graph.
func (st *state) add(ctx context.Context, key string, look *viewers.Profile) (*variant, error) {
	s := st.s
	p := s.in.Params
	rel := filepath.Join(p.String("out"), s.in.Pipeline, key, "index.m3u8")
	v := &variant{key: key, members: map[string]bool{}, look: look, playlist: s.in.Path(rel)}
	v.url = v.playlist
	if u := p.String("playlist_url"); u != "" {
		v.url = fill(u, s.in.Pipeline, key)
	}
	branch := st.branch(key, look, rel)
	if u := p.String("push"); u != "" {
		v.push = fill(u, s.in.Pipeline, key)
		branch = append(branch, map[string]any{"name": s.in.Name + "-" + key + "-push", "kind": "sink",
			"inputs": st.sinkInputs(s.in.Name+"-"+key, look), "params": map[string]any{"path": v.push}})
	}
	for _, b := range branch {
		v.stages = append(v.stages, b["name"].(string))
	}
	doc, err := json.Marshal(branch) // YAML reads JSON
	if err != nil {
		return nil, err
	}
	if err := s.in.Graph.AddBranch(ctx, append([]byte("  "), yamlSafe(doc)...), s.onFail); err != nil {
		return nil, fmt.Errorf("the variant's branch could not be added: %w", err)
	}
	st.variants[key] = v
	s.variants.Store(int64(len(st.variants)))
	s.added.Add(1)
	s.log.Info("variant added", "variant", key, "stages", v.stages, "playlist", v.playlist)
	return v, nil
}

// branch is the variant's stages: render -> encode -> HLS sink.
func (st *state) branch(key string, look *viewers.Profile, playlist string) []map[string]any {
	s := st.s
	p := s.in.Params
	name := s.in.Name + "-" + key
	height := p.Int("height")
	if mh := look.Quality.MaxHeight; mh > 0 && mh < height {
		height = mh
	}
	overlays, _ := json.Marshal(look.Overlays)
	render := map[string]any{"layout": orDefault(look.Layout, viewers.LayoutSource), "height": height,
		"privacy": orDefault(look.Privacy, viewers.PrivacyNone), "viewer_id": look.ID, "viewer_name": look.Name,
		"follow": p.String("follow"), "look_ahead": p.Duration("look_ahead").String(), "align": p.Duration("gop").String()}
	if len(look.Overlays) > 0 {
		render["overlays"] = string(overlays)
	}
	if f := p.String("font"); f != "" {
		render["font"] = f
	}
	enc := map[string]any{"codec": p.String("codec"), "preset": p.String("preset"), "bitrate": bitrate(p.String("bitrate"), look.Quality.MaxBitrate),
		"gop_duration": p.Duration("gop").String(), "gop_align": true}
	if c := p.String("codec"); c == "libx264" || c == "libx265" {
		enc["options"] = map[string]string{"sc_threshold": "0"} // no keyframes of its own: every variant's segments cut on the same frames
	}
	return []map[string]any{
		{"name": name + "-look", "kind": "render", "inputs": []string{s.in.Name}, "params": render},
		{"name": name + "-enc", "kind": "encode", "inputs": []string{name + "-look"}, "params": enc},
		{"name": name + "-hls", "kind": "sink", "inputs": st.sinkInputs(name, look), "params": map[string]any{
			"path": playlist, "hls_time": p.Duration("hls_time").String(), "hls_list_size": p.Int("hls_list_size")}},
	}
}

// sinkInputs are a variant's encoded video and, unless its viewers mute
// it, the pipeline's shared audio.
func (st *state) sinkInputs(name string, look *viewers.Profile) []string {
	in := []string{name + "-enc"}
	if len(st.s.in.Inputs) == 2 && look.Audio != viewers.AudioMute {
		in = append(in, st.s.in.Name+".audio")
	}
	return in
}

// bitrate is the pipeline's rendition bitrate, or the viewer's ceiling
// when it is lower.
func bitrate(base string, ceiling int) string {
	if ceiling <= 0 {
		return base
	}
	if b, err := pipeline.ParseBitrate(base); err == nil && int64(ceiling) < b {
		return fmt.Sprint(ceiling)
	}
	return base
}

func fill(tmpl, pipelineName, key string) string {
	return strings.NewReplacer("{pipeline}", pipelineName, "{variant}", key).Replace(tmpl)
}

func orDefault(v, d string) string {
	if v == "" {
		return d
	}
	return v
}

// yamlSafe escapes in JSON text the characters YAML does not take raw
// (DEL, the C1 controls, U+FEFF, U+FFFE and U+FFFF: "control characters
// are not allowed"), which json.Marshal leaves as they are. They can
// only be inside strings, where JSON's \uXXXX is YAML's too.
func yamlSafe(doc []byte) []byte {
	var b strings.Builder
	for _, r := range string(doc) {
		if r >= 0x7f && r <= 0x9f || r == 0xfeff || r == 0xfffe || r == 0xffff {
			fmt.Fprintf(&b, "\\u%04x", r)
			continue
		}
		b.WriteRune(r)
	}
	return []byte(b.String())
}
