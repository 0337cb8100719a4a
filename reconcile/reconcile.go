package reconcile

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"strconv"
)

// BucketsDefault is the number of digest buckets when Options.Buckets is 0.
const BucketsDefault = 256

// BucketsMax bounds Options.Buckets.
const BucketsMax = 1 << 16

// ErrInvalidOptions wraps invalid reconciliation options.
var ErrInvalidOptions = errors.New("accord reconcile: invalid options")

// Digest summarizes the (key, version) pairs of one bucket.
type Digest struct {
	Bucket int    `json:"bucket"`
	Count  int64  `json:"count"`
	Hash   uint64 `json:"hash"`
}

// Side is one side of a comparison: the producer's source of truth or a
// consumer's replica.
type Side interface {
	// Digests returns one digest per bucket, for buckets 0..buckets-1
	// (buckets without keys may be omitted).
	Digests(ctx context.Context, buckets int) ([]Digest, error)
	// Versions returns the version of every key that falls in one of the
	// given buckets (out of buckets in all).
	Versions(ctx context.Context, buckets int, which []int) (map[string]int64, error)
}

// Bucket returns the bucket of key out of buckets.
func Bucket(key string, buckets int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(buckets))
}

// pairHash hashes one (key, version) pair; digests add them up, so the
// order rows are read in does not matter.
func pairHash(key string, version int64) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(strconv.FormatInt(version, 10)))
	return h.Sum64()
}

// DigestAccumulator builds digests from (key, version) pairs; Side
// implementations feed it row by row.
type DigestAccumulator struct {
	buckets []Digest
}

// NewDigestAccumulator returns an accumulator for n buckets.
func NewDigestAccumulator(n int) *DigestAccumulator {
	d := &DigestAccumulator{buckets: make([]Digest, n)}
	for i := range d.buckets {
		d.buckets[i].Bucket = i
	}
	return d
}

// Add adds one pair.
func (d *DigestAccumulator) Add(key string, version int64) {
	b := &d.buckets[Bucket(key, len(d.buckets))]
	b.Count++
	b.Hash += pairHash(key, version)
}

// Digests returns the non-empty buckets' digests.
func (d *DigestAccumulator) Digests() []Digest {
	out := make([]Digest, 0, len(d.buckets))
	for _, b := range d.buckets {
		if b.Count > 0 {
			out = append(out, b)
		}
	}
	return out
}

// KeyDrift is one key whose versions differ.
type KeyDrift struct {
	Key            string `json:"key"`
	SourceVersion  int64  `json:"source_version"`
	ReplicaVersion int64  `json:"replica_version"`
}

// Report is what a reconciliation found.
type Report struct {
	Buckets           int        `json:"buckets"`
	MismatchedBuckets int        `json:"mismatched_buckets"`
	SourceKeys        int64      `json:"source_keys"`
	ReplicaKeys       int64      `json:"replica_keys"`
	KeysCompared      int        `json:"keys_compared"`
	Missing           []KeyDrift `json:"missing"`
	Stale             []KeyDrift `json:"stale"`
	Ahead             []KeyDrift `json:"ahead"`
	Extra             []KeyDrift `json:"extra"`
}

// InSync reports whether no drift was found.
func (r *Report) InSync() bool {
	return len(r.Missing)+len(r.Stale)+len(r.Ahead)+len(r.Extra) == 0
}

// DriftedKeys returns every drifted key, sorted: the keys a repair from the
// source re-emits (as snapshots, or as tombstones for Extra keys, which the
// source no longer has).
func (r *Report) DriftedKeys() []string {
	var keys []string
	for _, set := range [][]KeyDrift{r.Missing, r.Stale, r.Ahead, r.Extra} {
		for _, d := range set {
			keys = append(keys, d.Key)
		}
	}
	sort.Strings(keys)
	return keys
}

// Options are optional parameters of [Run]. A nil pointer means defaults.
type Options struct {
	// Buckets is the number of digest buckets. More buckets ship more
	// digests but fewer keys per mismatched bucket. Defaults to
	// BucketsDefault.
	Buckets int
}

// Run compares source and replica and reports the drift. It does not
// change anything.
func Run(ctx context.Context, source, replica Side, opts *Options) (*Report, error) {
	buckets := BucketsDefault
	if opts != nil && opts.Buckets != 0 {
		buckets = opts.Buckets
	}
	if buckets < 1 || buckets > BucketsMax {
		return nil, fmt.Errorf("%w: Buckets %d: must be between 1 and %d", ErrInvalidOptions, buckets, BucketsMax)
	}
	sd, err := source.Digests(ctx, buckets)
	if err != nil {
		return nil, fmt.Errorf("accord reconcile: source digests: %w", err)
	}
	rd, err := replica.Digests(ctx, buckets)
	if err != nil {
		return nil, fmt.Errorf("accord reconcile: replica digests: %w", err)
	}
	rep := &Report{Buckets: buckets}
	byBucket := func(ds []Digest) map[int]Digest {
		m := make(map[int]Digest, len(ds))
		for _, d := range ds {
			m[d.Bucket] = d
		}
		return m
	}
	sm, rm := byBucket(sd), byBucket(rd)
	var mismatched []int
	for b := 0; b < buckets; b++ {
		s, r := sm[b], rm[b]
		rep.SourceKeys += s.Count
		rep.ReplicaKeys += r.Count
		if s.Count != r.Count || s.Hash != r.Hash {
			mismatched = append(mismatched, b)
		}
	}
	rep.MismatchedBuckets = len(mismatched)
	if len(mismatched) == 0 {
		return rep, nil
	}
	sv, err := source.Versions(ctx, buckets, mismatched)
	if err != nil {
		return nil, fmt.Errorf("accord reconcile: source versions: %w", err)
	}
	rv, err := replica.Versions(ctx, buckets, mismatched)
	if err != nil {
		return nil, fmt.Errorf("accord reconcile: replica versions: %w", err)
	}
	keys := make([]string, 0, len(sv)+len(rv))
	for k := range sv {
		keys = append(keys, k)
	}
	for k := range rv {
		if _, ok := sv[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	rep.KeysCompared = len(keys)
	for _, k := range keys {
		s, inS := sv[k]
		r, inR := rv[k]
		d := KeyDrift{Key: k, SourceVersion: s, ReplicaVersion: r}
		switch {
		case inS && !inR:
			rep.Missing = append(rep.Missing, d)
		case !inS && inR:
			rep.Extra = append(rep.Extra, d)
		case r < s:
			rep.Stale = append(rep.Stale, d)
		case r > s:
			rep.Ahead = append(rep.Ahead, d)
		}
	}
	return rep, nil
}

// RepairFunc re-emits snapshots of the given keys from the producer.
type RepairFunc func(ctx context.Context, keys []string) error

// RunAndRepair runs a reconciliation and, when drift was found, calls repair
// with the drifted keys. It returns the report of what was found before the
// repair.
func RunAndRepair(ctx context.Context, source, replica Side, opts *Options, repair RepairFunc) (*Report, error) {
	rep, err := Run(ctx, source, replica, opts)
	if err != nil || rep.InSync() {
		return rep, err
	}
	if keys := rep.DriftedKeys(); len(keys) > 0 {
		if err := repair(ctx, keys); err != nil {
			return rep, fmt.Errorf("accord reconcile: repair %d keys: %w", len(keys), err)
		}
	}
	return rep, nil
}
