package reconcile

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
)

// SQLSide reads (key, version) pairs from a table in any Accord dialect.
// Table and column names come from configuration: they are validated as
// plain lowercase identifiers and quoted, never spliced in raw.
type SQLSide struct {
	db     *sql.DB
	names  sqlstore.Names
	cfg    SQLSideConfig
	query  string
	filter []any
}

// SQLSideConfig configures an [SQLSide].
type SQLSideConfig struct {
	// Dialect of the database. Required.
	Dialect accord.Dialect
	// Schema of the table (PostgreSQL schema, MySQL database). Optional.
	Schema string
	// Table holding the state. Required.
	Table string
	// KeyColumn holds the key (rendered as text). Required.
	KeyColumn string
	// VersionColumn holds the version (an integer). Required.
	VersionColumn string
	// KeyPrefix is prepended to every key read from KeyColumn, so that keys
	// match the partition keys of the events (for example "user-" makes row
	// 42 the key "user-42"). RowJSON strips it again. Optional.
	KeyPrefix string
	// FilterColumn and FilterValue restrict the rows read to
	// FilterColumn = FilterValue (for example replica = 'users' in the
	// replica_position table). Optional.
	FilterColumn string
	FilterValue  string
}

// NewSQLSide validates cfg and returns a Side over db.
func NewSQLSide(db *sql.DB, cfg SQLSideConfig) (*SQLSide, error) {
	var errs []error
	names, err := sqlstore.NewNames(cfg.Dialect, cfg.Schema, "")
	if err != nil {
		errs = append(errs, err)
	}
	for _, f := range []struct{ name, v string }{{"Table", cfg.Table}, {"KeyColumn", cfg.KeyColumn}, {"VersionColumn", cfg.VersionColumn}} {
		if err := sqlstore.ValidIdent(f.name, f.v); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.FilterColumn != "" {
		if err := sqlstore.ValidIdent("FilterColumn", cfg.FilterColumn); err != nil {
			errs = append(errs, err)
		}
	}
	if db == nil {
		errs = append(errs, errors.New("db is nil"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOptions, errors.Join(errs...))
	}
	s := &SQLSide{db: db, names: names, cfg: cfg}
	keyExpr := names.Quote(cfg.KeyColumn)
	if cfg.Dialect == accord.Postgres {
		keyExpr += "::text"
	}
	s.query = "SELECT " + keyExpr + ", " + names.Quote(cfg.VersionColumn) + " FROM " + s.table()
	if cfg.FilterColumn != "" {
		s.query += " WHERE " + names.Quote(cfg.FilterColumn) + " = " + sqlstore.Placeholders(cfg.Dialect)(1)
		s.filter = []any{cfg.FilterValue}
	}
	return s, nil
}

func (s *SQLSide) table() string {
	return s.names.Table(s.cfg.Table)
}

func (s *SQLSide) scan(ctx context.Context, each func(key string, version int64)) error {
	rows, err := s.db.QueryContext(ctx, s.query, s.filter...)
	if err != nil {
		return fmt.Errorf("read %s: %w", s.table(), err)
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		var version sql.NullInt64
		if err := rows.Scan(&key, &version); err != nil {
			return fmt.Errorf("read %s: %w", s.table(), err)
		}
		each(s.cfg.KeyPrefix+key, version.Int64)
	}
	return rows.Err()
}

// Digests implements Side.
func (s *SQLSide) Digests(ctx context.Context, buckets int) ([]Digest, error) {
	acc := NewDigestAccumulator(buckets)
	if err := s.scan(ctx, acc.Add); err != nil {
		return nil, err
	}
	return acc.Digests(), nil
}

// Versions implements Side.
func (s *SQLSide) Versions(ctx context.Context, buckets int, which []int) (map[string]int64, error) {
	want := make(map[int]bool, len(which))
	for _, b := range which {
		want[b] = true
	}
	out := map[string]int64{}
	err := s.scan(ctx, func(key string, version int64) {
		if want[Bucket(key, buckets)] {
			out[key] = version
		}
	})
	return out, err
}

// RowJSON returns the row of key as a JSON object of its columns (through
// q, usually a transaction), or found=false. It is what a generic repair
// re-emits as a snapshot.
func (s *SQLSide) RowJSON(ctx context.Context, q sqlstore.Querier, key string) (payload []byte, version int64, found bool, err error) {
	if !strings.HasPrefix(key, s.cfg.KeyPrefix) {
		return nil, 0, false, nil
	}
	key = strings.TrimPrefix(key, s.cfg.KeyPrefix)
	where := s.names.Quote(s.cfg.KeyColumn) + " = " + sqlstore.Placeholders(s.cfg.Dialect)(1)
	if s.cfg.Dialect == accord.Postgres {
		where = s.names.Quote(s.cfg.KeyColumn) + "::text = $1"
	}
	rows, err := q.QueryContext(ctx, "SELECT * FROM "+s.table()+" WHERE "+where, key)
	if err != nil {
		return nil, 0, false, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, 0, false, err
	}
	if !rows.Next() {
		return nil, 0, false, rows.Err()
	}
	vals := make([]any, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return nil, 0, false, err
	}
	obj := make(map[string]any, len(cols))
	for i, c := range cols {
		v := vals[i]
		if b, ok := v.([]byte); ok {
			v = string(b)
		}
		obj[c] = v
		if c == s.cfg.VersionColumn {
			switch n := vals[i].(type) {
			case int64:
				version = n
			case int32:
				version = int64(n)
			case []byte:
				fmt.Sscan(string(n), &version)
			}
		}
	}
	payload, err = json.Marshal(obj)
	return payload, version, true, err
}
