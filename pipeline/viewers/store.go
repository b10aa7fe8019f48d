package viewers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrStore wraps every failure to reach or use a pipeline's viewer bucket.
var ErrStore = errors.New("viewer store")

// Keys of the bucket: profiles are written by the viewers' clients (the
// avflow viewers command, a platform's backend), manifest entries by the
// personalise stage. An id has no dots, so the two never collide.
const (
	profilePrefix  = "profile."
	manifestPrefix = "manifest."
)

// ProfileKey and ManifestKey are the bucket's keys of a viewer's profile
// and manifest entry.
func ProfileKey(id string) string  { return profilePrefix + id }
func ManifestKey(id string) string { return manifestPrefix + id }

// Bounds of the bucket: a profile at its limits is a few kilobytes.
const (
	MaxValue  = 16 << 10
	MaxBucket = 64 << 20
)

// Bucket is the name of a pipeline's viewer bucket.
func Bucket(pipeline string) string { return "avflow-viewers-" + pipeline }

// Manifest states.
const (
	StateStarting = "starting" // the variant's branch is being added; its playlist is not written yet
	StateLive     = "live"     // the variant's playlist is being written
	StateRefused  = "refused"  // the viewer gets no output (see Error)
	StateEnded    = "ended"    // the pipeline has finished
)

// Entry is a viewer's manifest entry: which variant they see and where.
type Entry struct {
	Viewer   string    `json:"viewer"`
	Variant  string    `json:"variant,omitempty"`
	Playlist string    `json:"playlist,omitempty"` // the variant's HLS playlist, as a path or URL
	Push     string    `json:"push,omitempty"`     // the variant's push output (RTMP, SRT), if any
	State    string    `json:"state"`
	Error    string    `json:"error,omitempty"`
	Updated  time.Time `json:"updated"`
}

// Store is a pipeline's viewer bucket on NATS JetStream (key-value).
type Store struct {
	kv       jetstream.KeyValue
	js       jetstream.JetStream
	pipeline string
}

// Open binds to the pipeline's bucket, creating it when it does not exist.
// Profiles are kept in memory (history 1): a server restart forgets the
// viewers, as it ends the live run they belong to.
func Open(ctx context.Context, nc *nats.Conn, pipeline string) (*Store, error) {
	return open(ctx, nc, pipeline, true)
}

// Attach binds to the pipeline's bucket, which must exist (a client such
// as avflow viewers: no bucket means the pipeline has never run here).
func Attach(ctx context.Context, nc *nats.Conn, pipeline string) (*Store, error) {
	return open(ctx, nc, pipeline, false)
}

func open(ctx context.Context, nc *nats.Conn, pipeline string, create bool) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStore, err)
	}
	s := &Store{js: js, pipeline: pipeline}
	if err := s.bindRetrying(ctx, create); err != nil {
		return nil, err
	}
	return s, nil
}

// bindAttempt bounds one try of bind: a JetStream API request that no
// server answers (a cluster electing its meta leader, just started or
// after a node restart, drops them) is asked again rather than waited
// on until the caller's deadline.
const bindAttempt = 2 * time.Second

// bindRetrying binds, asking again each bindAttempt while requests go
// unanswered and ctx allows.
func (s *Store) bindRetrying(ctx context.Context, create bool) error {
	for {
		try, cancel := context.WithTimeout(ctx, bindAttempt)
		err := s.bind(try, create)
		cancel()
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return err
		}
	}
}

// Recreate makes the bucket again (after someone deleted it).
func (s *Store) Recreate(ctx context.Context) error { return s.bind(ctx, true) }

// bucketConfig is the bucket the pipeline makes. Anyone who may write
// the bucket writes it: its values and its size are bounded.
func (s *Store) bucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: Bucket(s.pipeline), Description: "avflow viewer profiles and manifest of pipeline " + s.pipeline,
		Storage: jetstream.MemoryStorage, History: 1, MaxValueSize: MaxValue, MaxBytes: MaxBucket,
	}
}

// unbounded says how a bucket's settings are looser than bucketConfig's
// ("" when they are not): a bucket made by someone else (deleted and
// made again by a client) may take values of any size, or without end.
func unbounded(st jetstream.KeyValueStatus) string {
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return "its settings cannot be read"
	}
	c := bs.StreamInfo().Config
	switch {
	case c.MaxMsgSize <= 0 || c.MaxMsgSize > MaxValue:
		return fmt.Sprintf("values of up to %d bytes (at most %d)", c.MaxMsgSize, MaxValue)
	case c.MaxBytes <= 0 || c.MaxBytes > MaxBucket:
		return fmt.Sprintf("a size of %d bytes (at most %d)", c.MaxBytes, MaxBucket)
	case c.MaxMsgsPerSubject != 1:
		return fmt.Sprintf("a history of %d (1)", c.MaxMsgsPerSubject)
	}
	return ""
}

// looseness reads kv's settings and says how they are looser than
// bucketConfig's ("" when they are not; an error when the bucket is gone).
func looseness(ctx context.Context, kv jetstream.KeyValue) (string, error) {
	st, err := kv.Status(ctx)
	if err != nil {
		return "", fmt.Errorf("%w: bucket %s: reading its settings failed: %w", ErrStore, kv.Bucket(), err)
	}
	return unbounded(st), nil
}

// bound puts the bucket's settings back to bucketConfig's when they are
// looser.
func (s *Store) bound(ctx context.Context, kv jetstream.KeyValue) (jetstream.KeyValue, error) {
	loose, err := looseness(ctx, kv)
	if err != nil {
		return nil, err
	}
	if loose == "" {
		return kv, nil
	}
	kv, err = s.js.UpdateKeyValue(ctx, s.bucketConfig())
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s has other settings (%s) and bounding them failed (delete the bucket): %w", ErrStore, Bucket(s.pipeline), loose, err)
	}
	return kv, nil
}

func (s *Store) bind(ctx context.Context, create bool) error {
	name := Bucket(s.pipeline)
	kv, err := s.js.KeyValue(ctx, name)
	switch {
	case err == nil && create: // the pipeline's: bounded as it makes it
		if kv, err = s.bound(ctx, kv); err != nil {
			return err
		}
	case err == nil:
	case errors.Is(err, jetstream.ErrBucketNotFound) && create:
		kv, err = s.js.CreateOrUpdateKeyValue(ctx, s.bucketConfig())
		if err != nil {
			return fmt.Errorf("%w: creating bucket %s failed: %w", ErrStore, name, err)
		}
	case errors.Is(err, jetstream.ErrBucketNotFound):
		return fmt.Errorf("%w: no bucket %s: is pipeline %q running with a personalise stage on this NATS server?", ErrStore, name, s.pipeline)
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, nats.ErrJetStreamNotEnabled):
		return fmt.Errorf("%w: bucket %s: the NATS server has no JetStream (start nats-server with -js): %w", ErrStore, name, err)
	default:
		return fmt.Errorf("%w: bucket %s: %w", ErrStore, name, err)
	}
	s.kv = kv
	return nil
}

// Put stores a viewer's profile (checked first).
func (s *Store) Put(ctx context.Context, p *Profile) error {
	if err := p.Check(); err != nil {
		return err
	}
	b, err := p.Encode()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	if _, err := s.kv.Put(ctx, ProfileKey(p.ID), b); err != nil {
		return fmt.Errorf("%w: storing viewer %q failed: %w", ErrStore, p.ID, err)
	}
	return nil
}

// PutBack stores a profile in a bucket that was made again, unless its
// key has been written there since it was made (by anyone: a write or a
// removal, which the bucket's watch brings): put says whether it was.
// The stage puts back what it knew without undoing a client's change
// made meanwhile (a Put would bring a removed viewer back).
func (s *Store) PutBack(ctx context.Context, p *Profile) (put bool, err error) {
	b, err := p.Encode()
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrStore, err)
	}
	_, err = s.kv.Update(ctx, ProfileKey(p.ID), b, 0) // revision 0: the key has no message at all, not even a removal
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return false, nil
	}
	return false, fmt.Errorf("%w: putting viewer %q back failed: %w", ErrStore, p.ID, err)
}

// Delete removes a viewer's profile; ErrNoViewer if there is none.
func (s *Store) Delete(ctx context.Context, id string) error {
	if _, err := s.kv.Get(ctx, ProfileKey(id)); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("%w: %w %q", ErrStore, ErrNoViewer, id)
		}
		return fmt.Errorf("%w: %w", ErrStore, err)
	}
	if err := s.kv.Delete(ctx, ProfileKey(id)); err != nil {
		return fmt.Errorf("%w: removing viewer %q failed: %w", ErrStore, id, err)
	}
	return nil
}

// ErrNoViewer is Delete's error for an id the bucket does not hold.
var ErrNoViewer = errors.New("no viewer")

// SetEntry writes a viewer's manifest entry and returns the bucket's
// revision of the write.
func (s *Store) SetEntry(ctx context.Context, e Entry) (uint64, error) {
	if e.Updated.IsZero() {
		e.Updated = time.Now().UTC()
	}
	b, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrStore, err)
	}
	rev, err := s.kv.Put(ctx, ManifestKey(e.Viewer), b)
	if err != nil {
		return 0, fmt.Errorf("%w: writing the manifest entry of %q failed: %w", ErrStore, e.Viewer, err)
	}
	return rev, nil
}

// DropEntry removes a viewer's manifest entry (gone already is fine).
func (s *Store) DropEntry(ctx context.Context, id string) error {
	if err := s.kv.Delete(ctx, ManifestKey(id)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("%w: removing the manifest entry of %q failed: %w", ErrStore, id, err)
	}
	return nil
}

// Listing is what the bucket holds: the profiles, those that do not
// decode (by id, with the reason), and the manifest.
type Listing struct {
	Profiles []*Profile
	Bad      map[string]error
	Manifest map[string]Entry
}

// List reads the whole bucket.
func (s *Store) List(ctx context.Context) (*Listing, error) {
	l := &Listing{Bad: map[string]error{}, Manifest: map[string]Entry{}}
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: listing failed: %w", ErrStore, err)
	}
	defer keys.Stop() //nolint:errcheck // nothing to do with it
	for key := range keys.Keys() {
		ent, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed since
		}
		if err != nil {
			return nil, fmt.Errorf("%w: reading %s failed: %w", ErrStore, key, err)
		}
		switch {
		case strings.HasPrefix(key, profilePrefix):
			id := strings.TrimPrefix(key, profilePrefix)
			p, err := DecodeAs(id, ent.Value())
			if err != nil {
				l.Bad[id] = err
				continue
			}
			l.Profiles = append(l.Profiles, p)
		case strings.HasPrefix(key, manifestPrefix):
			var e Entry
			if err := json.Unmarshal(ent.Value(), &e); err == nil {
				l.Manifest[strings.TrimPrefix(key, manifestPrefix)] = e
			}
		}
	}
	return l, nil
}

// DecodeAs decodes a profile stored under id: the id inside must match
// the key, so a profile cannot take another viewer's place.
func DecodeAs(id string, data []byte) (*Profile, error) {
	p, err := Decode(data)
	if err != nil {
		return nil, err
	}
	if p.ID != id {
		return nil, fmt.Errorf("%w %q: id: stored under %q", ErrProfile, p.ID, id)
	}
	return p, nil
}

// Change is one profile written or removed, as Watch sees it.
type Change struct {
	ID      string
	Profile *Profile // nil when removed, or when it does not decode (Err)
	Err     error    // why the stored profile was refused
	Removed bool
}

// Watch sends every profile the bucket holds, then each change, until ctx
// ends. Initial is closed once the profiles there at the start are sent.
// The channel is closed when ctx ends or the watch fails (the bucket
// deleted: see Alive).
func (s *Store) Watch(ctx context.Context) (changes <-chan Change, initial <-chan struct{}, err error) {
	w, err := s.kv.Watch(ctx, profilePrefix+"*")
	if err != nil {
		return nil, nil, fmt.Errorf("%w: watching profiles failed: %w", ErrStore, err)
	}
	init := make(chan struct{})
	return relay(ctx, w, func() { close(init) }, change), init, nil
}

// WatchManifest sends each write and removal of a manifest entry from now
// on (not those before), until ctx ends or the watch fails.
func (s *Store) WatchManifest(ctx context.Context) (<-chan jetstream.KeyValueEntry, error) {
	w, err := s.kv.Watch(ctx, manifestPrefix+"*", jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("%w: watching the manifest failed: %w", ErrStore, err)
	}
	return relay(ctx, w, func() {}, func(e jetstream.KeyValueEntry) jetstream.KeyValueEntry { return e }), nil
}

// relay sends what a watch delivers, made into T, until ctx ends or the
// watch fails (the channel is then closed, and the watch stopped);
// initial is called once the values there at the start are sent.
func relay[T any](ctx context.Context, w jetstream.KeyWatcher, initial func(), conv func(jetstream.KeyValueEntry) T) <-chan T {
	out := make(chan T)
	go func() {
		defer close(out)
		defer w.Stop() //nolint:errcheck // nothing to do with it
		initDone := false
		for {
			select {
			case <-ctx.Done():
				return
			case ent, ok := <-w.Updates():
				if !ok {
					return
				}
				if ent == nil {
					if !initDone {
						initDone = true
						initial()
					}
					continue
				}
				select {
				case out <- conv(ent):
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

func change(ent jetstream.KeyValueEntry) Change {
	id := strings.TrimPrefix(ent.Key(), profilePrefix)
	if ent.Operation() != jetstream.KeyValuePut {
		return Change{ID: id, Removed: true}
	}
	p, err := DecodeAs(id, ent.Value())
	return Change{ID: id, Profile: p, Err: err}
}

// Alive reports whether the bucket still exists, with its bounds (one
// deleted and made again by someone else may have none: Recreate bounds
// it).
func (s *Store) Alive(ctx context.Context) error {
	loose, err := looseness(ctx, s.kv) // one request: the bucket's settings, by name
	if err != nil {
		return err
	}
	if loose != "" {
		return fmt.Errorf("%w: bucket %s was made again with other settings: %s", ErrStore, Bucket(s.pipeline), loose)
	}
	return nil
}
