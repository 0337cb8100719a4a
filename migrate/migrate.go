package migrate

import (
	"bytes"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/sqlstore"
)

//go:embed migrations
var migrationFS embed.FS

// TablePrefixDefault is the table prefix used when Config.TablePrefix is empty.
const TablePrefixDefault = "accord_"

// Direction is the direction of a migration run.
type Direction string

const (
	// Up applies migrations that have not run yet.
	Up Direction = "up"
	// Down reverts applied migrations, newest first.
	Down Direction = "down"
)

var (
	// ErrNotMigrated is returned by [Migrator.Validate] when the database is
	// missing migrations this version of Accord needs.
	ErrNotMigrated = errors.New("accord: database schema is not migrated")
	// ErrUnknownVersion is returned for a target version no migration has.
	ErrUnknownVersion = errors.New("accord: unknown migration version")
)

// Config configures a [Migrator].
type Config struct {
	// Dialect selects the migration set. Required.
	Dialect accord.Dialect

	// Schema is the PostgreSQL schema the tables live in; it is created if
	// missing. Empty means the connection's search_path (usually "public").
	// Must be empty on SQLite. Defaults to "".
	Schema string

	// TablePrefix is prepended to every table name. Lowercase letters, digits
	// and underscores. Defaults to TablePrefixDefault ("accord_").
	TablePrefix string

	// Logger receives one line per applied migration. Defaults to a logger
	// that discards everything.
	Logger *slog.Logger
}

// WithDefaults returns a copy of c with defaults filled in. A nil c is
// treated as an empty Config.
func (c *Config) WithDefaults() *Config {
	out := Config{}
	if c != nil {
		out = *c
	}
	if out.TablePrefix == "" {
		out.TablePrefix = TablePrefixDefault
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return &out
}

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	// SQLUp and SQLDown are the statements with schema and prefix filled in.
	SQLUp   string
	SQLDown string
}

// MigrationStatus is a known migration and whether it is applied.
type MigrationStatus struct {
	Migration
	Applied   bool
	AppliedAt time.Time
}

// MigrateOpts are optional parameters of [Migrator.Migrate]. A nil pointer
// means all defaults.
type MigrateOpts struct {
	// DryRun computes what would run and returns it without touching the
	// database.
	DryRun bool
	// MaxSteps bounds how many migrations run. Zero means no bound for Up and
	// one step for Down; -1 means no bound in either direction (Down with -1
	// reverts everything, including the version table).
	MaxSteps int
	// TargetVersion stops the run at a version. Up: the newest version to
	// apply (0 means the latest). Down: the version left as the newest
	// applied one (0 means no target: MaxSteps decides).
	TargetVersion int
}

// MigrateVersion is one migration run by [Migrator.Migrate].
type MigrateVersion struct {
	Version  int
	Name     string
	Duration time.Duration
	SQL      string
}

// MigrateResult is the outcome of [Migrator.Migrate].
type MigrateResult struct {
	Direction Direction
	Versions  []MigrateVersion
}

// Migrator applies Accord's migrations to one database.
type Migrator struct {
	db         *sql.DB
	cfg        *Config
	names      sqlstore.Names
	migrations []Migration
}

// New returns a Migrator for db. It validates the configuration (dialect,
// schema, prefix) and renders every migration; it does not touch the
// database.
func New(db *sql.DB, cfg *Config) (*Migrator, error) {
	cfg = cfg.WithDefaults()
	if db == nil {
		return nil, errors.New("accord migrate: invalid config: db is nil")
	}
	names, err := sqlstore.NewNames(cfg.Dialect, cfg.Schema, cfg.TablePrefix)
	if err != nil {
		return nil, fmt.Errorf("accord migrate: invalid config: %w", err)
	}
	ms, err := load(names)
	if err != nil {
		return nil, err
	}
	return &Migrator{db: db, cfg: cfg, names: names, migrations: ms}, nil
}

// All returns every migration known for the dialect, oldest first.
func (m *Migrator) All() []Migration { return append([]Migration(nil), m.migrations...) }

// Latest returns the newest known migration version.
func (m *Migrator) Latest() int { return m.migrations[len(m.migrations)-1].Version }

var fileRe = regexp.MustCompile(`^(\d{3})_([a-z0-9_]+)\.(up|down)\.sql$`)

func load(names sqlstore.Names) ([]Migration, error) {
	dir := path.Join("migrations", string(names.Dialect))
	entries, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return nil, fmt.Errorf("accord migrate: no migrations for dialect %q: %w", names.Dialect, err)
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		mm := fileRe.FindStringSubmatch(e.Name())
		if mm == nil {
			return nil, fmt.Errorf("accord migrate: bad migration file name %q", e.Name())
		}
		v, _ := strconv.Atoi(mm[1])
		raw, err := fs.ReadFile(migrationFS, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		rendered, err := render(names, e.Name(), string(raw))
		if err != nil {
			return nil, err
		}
		mig := byVersion[v]
		if mig == nil {
			mig = &Migration{Version: v, Name: mm[2]}
			byVersion[v] = mig
		}
		if mm[3] == "up" {
			mig.SQLUp = rendered
		} else {
			mig.SQLDown = rendered
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, mig := range byVersion {
		if mig.SQLUp == "" || mig.SQLDown == "" {
			return nil, fmt.Errorf("accord migrate: migration %03d_%s lacks its up or down file", mig.Version, mig.Name)
		}
		out = append(out, *mig)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, mig := range out {
		if mig.Version != i+1 {
			return nil, fmt.Errorf("accord migrate: migration versions are not contiguous at %03d", mig.Version)
		}
	}
	return out, nil
}

func render(names sqlstore.Names, file, raw string) (string, error) {
	ident := func(s string) string { return names.Quote(names.Prefix + s) }
	tmpl, err := template.New(file).Funcs(template.FuncMap{
		"table": names.Table,
		"func":  names.Table,
		"ident": ident,
	}).Option("missingkey=error").Parse(raw)
	if err != nil {
		return "", fmt.Errorf("accord migrate: parse %s: %w", file, err)
	}
	var buf bytes.Buffer
	err = tmpl.Execute(&buf, map[string]string{
		"Schema":  names.Schema,
		"QSchema": names.Quote(names.Schema),
		"Prefix":  names.Prefix,
		"Channel": names.Channel(),
	})
	if err != nil {
		return "", fmt.Errorf("accord migrate: render %s: %w", file, err)
	}
	return buf.String(), nil
}

// SQL returns the SQL of one migration in one direction, or of all
// migrations in order (up: oldest first; down: newest first) when version is
// 0, for teams that apply migrations with their own tool. It includes the
// statements that record the version, so the result is equivalent to Migrate.
func (m *Migrator) SQL(dir Direction, version int) (string, error) {
	var sel []Migration
	for _, mig := range m.migrations {
		if version == 0 || mig.Version == version {
			sel = append(sel, mig)
		}
	}
	if len(sel) == 0 {
		return "", fmt.Errorf("%w: %d (latest is %d)", ErrUnknownVersion, version, m.Latest())
	}
	var b strings.Builder
	switch dir {
	case Up:
		for _, mig := range sel {
			fmt.Fprintf(&b, "-- accord migration %03d_%s (up)\n%s\n%s;\n\n", mig.Version, mig.Name,
				strings.TrimSpace(mig.SQLUp), m.recordSQL(mig, true))
		}
	case Down:
		for i := len(sel) - 1; i >= 0; i-- {
			mig := sel[i]
			fmt.Fprintf(&b, "-- accord migration %03d_%s (down)\n", mig.Version, mig.Name)
			if mig.Version != 1 {
				fmt.Fprintf(&b, "%s;\n", m.recordSQL(mig, false))
			}
			fmt.Fprintf(&b, "%s\n\n", strings.TrimSpace(mig.SQLDown))
		}
	default:
		return "", fmt.Errorf("accord migrate: unknown direction %q (want up or down)", dir)
	}
	return b.String(), nil
}

// recordSQL is the literal statement that records (or forgets) a version,
// for printed SQL. Names are validated identifiers, version and name come
// from embedded files.
func (m *Migrator) recordSQL(mig Migration, up bool) string {
	if up {
		return fmt.Sprintf("INSERT INTO %s (version, name) VALUES (%d, '%s')", m.names.Migration(), mig.Version, mig.Name)
	}
	return fmt.Sprintf("DELETE FROM %s WHERE version = %d", m.names.Migration(), mig.Version)
}

// Applied returns the applied versions with their time, read from the
// version table. A database without the table has none.
func (m *Migrator) Applied(ctx context.Context) (map[int]time.Time, error) {
	exists, err := sqlstore.TableExists(ctx, m.db, m.names, "migration")
	if err != nil {
		return nil, fmt.Errorf("accord migrate: %w", err)
	}
	out := map[int]time.Time{}
	if !exists {
		return out, nil
	}
	rows, err := m.db.QueryContext(ctx, "SELECT version, applied_at FROM "+m.names.Migration())
	if err != nil {
		return nil, fmt.Errorf("accord migrate: read versions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v int
		var at any
		if err := rows.Scan(&v, &at); err != nil {
			return nil, fmt.Errorf("accord migrate: read versions: %w", err)
		}
		out[v] = parseTime(at)
	}
	return out, rows.Err()
}

func parseTime(v any) time.Time {
	switch t := v.(type) {
	case time.Time:
		return t
	case string:
		if p, err := time.Parse("2006-01-02T15:04:05.999Z", t); err == nil {
			return p
		}
	case []byte:
		return parseTime(string(t))
	}
	return time.Time{}
}

// List returns every known migration with whether it is applied.
func (m *Migrator) List(ctx context.Context) ([]MigrationStatus, error) {
	applied, err := m.Applied(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]MigrationStatus, 0, len(m.migrations))
	for _, mig := range m.migrations {
		at, ok := applied[mig.Version]
		out = append(out, MigrationStatus{Migration: mig, Applied: ok, AppliedAt: at})
	}
	return out, nil
}

// Validate returns nil when every known migration is applied, and an error
// wrapping ErrNotMigrated that names the missing versions otherwise.
func (m *Migrator) Validate(ctx context.Context) error {
	applied, err := m.Applied(ctx)
	if err != nil {
		return err
	}
	var missing []string
	for _, mig := range m.migrations {
		if _, ok := applied[mig.Version]; !ok {
			missing = append(missing, fmt.Sprintf("%03d_%s", mig.Version, mig.Name))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s; run `accord migrate up` or migrate.Migrator.Migrate",
			ErrNotMigrated, strings.Join(missing, ", "))
	}
	return nil
}

// Migrate applies (Up) or reverts (Down) migrations. Up applies every
// pending migration unless opts bound it; Down reverts one step unless opts
// say otherwise. Each migration runs in its own transaction with its version
// row.
func (m *Migrator) Migrate(ctx context.Context, dir Direction, opts *MigrateOpts) (*MigrateResult, error) {
	if opts == nil {
		opts = &MigrateOpts{}
	}
	if opts.TargetVersion < 0 || opts.TargetVersion > m.Latest() {
		return nil, fmt.Errorf("%w: target %d (latest is %d)", ErrUnknownVersion, opts.TargetVersion, m.Latest())
	}
	applied, err := m.Applied(ctx)
	if err != nil {
		return nil, err
	}
	res := &MigrateResult{Direction: dir}
	var plan []Migration
	switch dir {
	case Up:
		target := m.Latest()
		if opts.TargetVersion > 0 {
			target = opts.TargetVersion
		}
		for _, mig := range m.migrations {
			if _, ok := applied[mig.Version]; !ok && mig.Version <= target {
				plan = append(plan, mig)
			}
		}
		if opts.MaxSteps > 0 && len(plan) > opts.MaxSteps {
			plan = plan[:opts.MaxSteps]
		}
	case Down:
		steps := 1
		if opts.MaxSteps > 0 {
			steps = opts.MaxSteps
		}
		if opts.MaxSteps < 0 || opts.TargetVersion > 0 {
			steps = len(m.migrations)
		}
		for i := len(m.migrations) - 1; i >= 0 && len(plan) < steps; i-- {
			mig := m.migrations[i]
			if _, ok := applied[mig.Version]; ok && mig.Version > opts.TargetVersion {
				plan = append(plan, mig)
			}
		}
	default:
		return nil, fmt.Errorf("accord migrate: unknown direction %q (want up or down)", dir)
	}
	for _, mig := range plan {
		start := time.Now()
		stmt := mig.SQLUp
		if dir == Down {
			stmt = mig.SQLDown
		}
		if !opts.DryRun {
			ran, err := m.run(ctx, mig, dir)
			if err != nil {
				return res, err
			}
			if !ran {
				// Another migrator did it while this one waited for the lock.
				continue
			}
			m.cfg.Logger.InfoContext(ctx, "accord migration applied", "direction", dir, "version", mig.Version, "name", mig.Name)
		}
		res.Versions = append(res.Versions, MigrateVersion{Version: mig.Version, Name: mig.Name, Duration: time.Since(start), SQL: stmt})
	}
	return res, nil
}

// mysqlLockName is the SQL expression of the lock that serializes
// concurrent migrators of one installation (database and table prefix) on
// MySQL; its two parameters are the schema ("" for the connection's
// database) and the prefix. Lock names are global to the server and at most
// 64 characters: "accord_migrate_" and a SHA-1 in hex.
const mysqlLockName = "CONCAT('accord_migrate_', SHA1(CONCAT(COALESCE(NULLIF(?, ''), DATABASE()), '.', ?)))"

// advisoryLockKey serializes concurrent migrators on PostgreSQL.
const advisoryLockKey = 0x6163636f7264 // "accord"

// run applies one migration; ran is false when another migrator had
// already done it.
func (m *Migrator) run(ctx context.Context, mig Migration, dir Direction) (ran bool, err error) {
	conn, err := m.db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("accord migrate: connect: %w", err)
	}
	defer conn.Close()
	if m.names.Dialect == accord.MySQL {
		// A session lock: MySQL has no transactional advisory lock, and its
		// DDL commits implicitly anyway.
		var got sql.NullInt64
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK("+mysqlLockName+", 60)", m.names.Schema, m.names.Prefix).Scan(&got); err != nil || got.Int64 != 1 {
			if err == nil {
				err = errors.New("another migrator holds it")
			}
			return false, fmt.Errorf("accord migrate: could not take the migration lock within 60 s: %w", err)
		}
		defer func() {
			_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT RELEASE_LOCK("+mysqlLockName+")", m.names.Schema, m.names.Prefix)
		}()
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("accord migrate: begin %03d_%s: %w", mig.Version, mig.Name, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if m.names.Dialect == accord.Postgres || m.names.Dialect == accord.MySQL {
		if m.names.Dialect == accord.Postgres {
			if _, err = tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", advisoryLockKey); err != nil {
				return false, fmt.Errorf("accord migrate: lock: %w", err)
			}
		}
		// Another migrator may have applied (or reverted) it while we waited
		// for the lock; then there is nothing left to do. The version table
		// itself may have been created (001 up) or dropped (001 down) by that
		// migrator, so look it up before reading it.
		var exists bool
		if exists, err = sqlstore.TableExists(ctx, tx, m.names, "migration"); err != nil {
			return false, fmt.Errorf("accord migrate: %w", err)
		}
		var n int
		if exists {
			row := tx.QueryRowContext(ctx, "SELECT count(*) FROM "+m.names.Migration()+" WHERE version = "+sqlstore.Placeholders(m.names.Dialect)(1), mig.Version)
			if err = row.Scan(&n); err != nil {
				return false, fmt.Errorf("accord migrate: %w", err)
			}
		}
		if (dir == Up && n > 0) || (dir == Down && n == 0) {
			return false, tx.Commit()
		}
	}
	ph := sqlstore.Placeholders(m.names.Dialect)
	switch dir {
	case Up:
		if _, err = tx.ExecContext(ctx, mig.SQLUp); err != nil {
			return false, fmt.Errorf("accord migrate: apply %03d_%s: %w", mig.Version, mig.Name, err)
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO "+m.names.Migration()+" (version, name) VALUES ("+ph(1)+", "+ph(2)+")", mig.Version, mig.Name)
	case Down:
		if mig.Version != 1 {
			if _, err = tx.ExecContext(ctx, "DELETE FROM "+m.names.Migration()+" WHERE version = "+ph(1), mig.Version); err != nil {
				return false, fmt.Errorf("accord migrate: %w", err)
			}
		}
		_, err = tx.ExecContext(ctx, mig.SQLDown)
	}
	if err != nil {
		return false, fmt.Errorf("accord migrate: %s %03d_%s: %w", dir, mig.Version, mig.Name, err)
	}
	if err = tx.Commit(); err != nil {
		return false, fmt.Errorf("accord migrate: commit %03d_%s: %w", mig.Version, mig.Name, err)
	}
	return true, nil
}
