package migrate_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	neturl "net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/outbox"
)

// freshDB is an empty, not yet migrated place for an Accord installation: a
// new PostgreSQL schema or MySQL database name (that does not exist yet) or
// a new SQLite file.
type freshDB struct {
	DB      *sql.DB
	Dialect accord.Dialect
	Schema  string
}

// freshPostgres returns a schema name on the test database that does not
// exist yet and is dropped when the test ends.
func freshPostgres(t *testing.T) freshDB {
	t.Helper()
	db := dbtest.Postgres(t)
	schema := dbtest.RandomName("t_")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, `DROP SCHEMA IF EXISTS "`+schema+`" CASCADE`); err != nil {
			t.Logf("drop schema %s: %v", schema, err)
		}
	})
	return freshDB{DB: db, Dialect: accord.Postgres, Schema: schema}
}

// freshMySQL returns a database name on the test MySQL/MariaDB server that
// does not exist yet and is dropped when the test ends.
func freshMySQL(t *testing.T) freshDB {
	t.Helper()
	db := dbtest.MySQL(t)
	schema := dbtest.RandomName("t_")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+schema+"`"); err != nil {
			t.Logf("drop database %s: %v", schema, err)
		}
	})
	return freshDB{DB: db, Dialect: accord.MySQL, Schema: schema}
}

// freshSQLite returns a new, empty SQLite database in a temporary file.
func freshSQLite(t *testing.T) freshDB {
	t.Helper()
	db, d, err := accord.OpenDB("sqlite://" + filepath.Join(t.TempDir(), "accord.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return freshDB{DB: db, Dialect: d}
}

// eachDialect runs f as a parallel subtest per dialect, each on a fresh,
// unmigrated database.
func eachDialect(t *testing.T, f func(t *testing.T, fx freshDB)) {
	t.Helper()
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		f(t, freshPostgres(t))
	})
	t.Run("mysql", func(t *testing.T) {
		t.Parallel()
		f(t, freshMySQL(t))
	})
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		f(t, freshSQLite(t))
	})
}

func (fx freshDB) config() *migrate.Config {
	return &migrate.Config{Dialect: fx.Dialect, Schema: fx.Schema}
}

// quote quotes an identifier the way the dialect wants it, written out here
// independently of the code under test.
func quote(d accord.Dialect, ident string) string {
	if d == accord.MySQL {
		return "`" + ident + "`"
	}
	return `"` + ident + `"`
}

// table is the quoted, schema-qualified name of a table of fx.
func (fx freshDB) table(name string) string {
	if fx.Schema != "" {
		return quote(fx.Dialect, fx.Schema) + "." + quote(fx.Dialect, name)
	}
	return quote(fx.Dialect, name)
}

func newMigrator(t *testing.T, db *sql.DB, cfg *migrate.Config) *migrate.Migrator {
	t.Helper()
	m, err := migrate.New(db, cfg)
	require.NoError(t, err)
	return m
}

// tableExists looks a table up in the catalog, independently of the code
// under test. On PostgreSQL an empty schema means current_schema().
func tableExists(t *testing.T, fx freshDB, table string) bool {
	t.Helper()
	ctx := context.Background()
	var n int
	switch fx.Dialect {
	case accord.Postgres:
		require.NoError(t, fx.DB.QueryRowContext(ctx,
			`SELECT count(*) FROM information_schema.tables
			 WHERE table_schema = COALESCE(NULLIF($1, ''), current_schema()) AND table_name = $2`,
			fx.Schema, table).Scan(&n))
	case accord.MySQL:
		require.NotEmpty(t, fx.Schema, "MySQL fixtures name their database")
		require.NoError(t, fx.DB.QueryRowContext(ctx,
			`SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?`,
			fx.Schema, table).Scan(&n))
	case accord.SQLite:
		require.NoError(t, fx.DB.QueryRowContext(ctx,
			`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&n))
	default:
		t.Fatalf("unknown dialect %q", fx.Dialect)
	}
	return n > 0
}

// schemaExists reports whether fx's PostgreSQL schema or MySQL database
// exists.
func schemaExists(t *testing.T, fx freshDB) bool {
	t.Helper()
	ctx := context.Background()
	var n int
	switch fx.Dialect {
	case accord.Postgres:
		require.NoError(t, fx.DB.QueryRowContext(ctx,
			`SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = $1`, fx.Schema).Scan(&n))
	case accord.MySQL:
		require.NoError(t, fx.DB.QueryRowContext(ctx,
			`SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?`, fx.Schema).Scan(&n))
	default:
		t.Fatalf("dialect %q has no schemas", fx.Dialect)
	}
	return n > 0
}

// versionTables are the tables (without prefix) each migration creates.
var versionTables = map[int][]string{
	1: {"migration"},
	2: {"outbox"},
	3: {"inbox", "inbox_attempt", "dead_letter"},
	4: {"replica_position", "replica_parked"},
	5: {"feed", "feed_cursor"},
	6: {"outbox_dead"},
	7: {"relay_lease", "relay_instance"},
	8: {}, // a column of the outbox, on MySQL only
}

// requireTables checks that exactly the tables of the applied versions
// exist, with the given prefix.
func requireTables(t *testing.T, fx freshDB, prefix string, applied ...int) {
	t.Helper()
	require.Len(t, versionTables, len(allVersions), "versionTables must list every migration")
	for v, tables := range versionTables {
		want := slices.Contains(applied, v)
		for _, table := range tables {
			require.Equal(t, want, tableExists(t, fx, prefix+table), "table %s%s of version %d", prefix, table, v)
		}
	}
}

type versionName struct {
	Version int
	Name    string
}

func resultVersions(res *migrate.MigrateResult) []versionName {
	out := []versionName{}
	for _, v := range res.Versions {
		out = append(out, versionName{v.Version, v.Name})
	}
	return out
}

func appliedVersions(t *testing.T, m *migrate.Migrator) []int {
	t.Helper()
	list, err := m.List(context.Background())
	require.NoError(t, err)
	out := []int{}
	for _, s := range list {
		if s.Applied {
			out = append(out, s.Version)
		}
	}
	return out
}

var (
	v1 = versionName{1, "migration_table"}
	v2 = versionName{2, "outbox"}
	v3 = versionName{3, "inbox"}
	v4 = versionName{4, "replica"}
	v5 = versionName{5, "feed"}
	v6 = versionName{6, "outbox_dead"}
	v7 = versionName{7, "relay_lease"}
	v8 = versionName{8, "outbox_inserted_at"}

	// allVersions is every migration, oldest first.
	allVersions = []versionName{v1, v2, v3, v4, v5, v6, v7, v8}
	// allDown is every migration, newest first, as Down reverts them.
	allDown = []versionName{v8, v7, v6, v5, v4, v3, v2, v1}
)

// fileName is how errors and printed SQL name a migration.
func (v versionName) fileName() string { return fmt.Sprintf("%03d_%s", v.Version, v.Name) }

func TestMigrator_AllAndLatest(t *testing.T) {
	t.Parallel()
	for _, d := range []accord.Dialect{accord.Postgres, accord.MySQL, accord.SQLite} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			m := newMigrator(t, closedDB(t), &migrate.Config{Dialect: d})
			require.Equal(t, len(allVersions), m.Latest())
			all := m.All()
			require.Len(t, all, len(allVersions))
			for i, want := range allVersions {
				require.Equal(t, want, versionName{all[i].Version, all[i].Name})
			}
			for _, mig := range all {
				require.NotEmpty(t, mig.SQLUp)
				require.NotEmpty(t, mig.SQLDown)
				require.NotContains(t, mig.SQLUp, "{{", "template not rendered")
				require.NotContains(t, mig.SQLDown, "{{", "template not rendered")
				if d == accord.MySQL {
					// MySQL reads "..." as a string literal, not a name.
					require.NotContains(t, mig.SQLUp, `"`, "%s up", versionName{mig.Version, mig.Name}.fileName())
					require.NotContains(t, mig.SQLDown, `"`, "%s down", versionName{mig.Version, mig.Name}.fileName())
				} else {
					require.NotContains(t, mig.SQLUp, "`")
					require.NotContains(t, mig.SQLDown, "`")
				}
			}
			// All returns a copy.
			all[0].Name = "changed"
			require.Equal(t, "migration_table", m.All()[0].Name)
		})
	}
}

func TestMigrator_UpListValidate(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())

		err := m.Validate(ctx)
		require.ErrorIs(t, err, migrate.ErrNotMigrated)
		for _, v := range allVersions {
			require.ErrorContains(t, err, v.fileName())
		}
		require.Empty(t, appliedVersions(t, m))

		before := time.Now().Add(-time.Minute)
		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, migrate.Up, res.Direction)
		require.Equal(t, allVersions, resultVersions(res))
		for _, v := range res.Versions {
			require.NotEmpty(t, v.SQL)
		}

		list, err := m.List(ctx)
		require.NoError(t, err)
		require.Len(t, list, len(allVersions))
		for i, s := range list {
			require.Equal(t, i+1, s.Version)
			require.True(t, s.Applied, "version %d", s.Version)
			require.True(t, s.AppliedAt.After(before), "version %d applied at %v", s.Version, s.AppliedAt)
			require.True(t, s.AppliedAt.Before(time.Now().Add(time.Minute)), "version %d applied at %v", s.Version, s.AppliedAt)
		}
		require.NoError(t, m.Validate(ctx))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)

		// A second Up has nothing to do.
		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Empty(t, res.Versions)
		require.NoError(t, m.Validate(ctx))
	})
}

func TestMigrator_DownAndRoundTrip(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		_, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)

		// Down without options reverts one step: only the newest.
		res, err := m.Migrate(ctx, migrate.Down, nil)
		require.NoError(t, err)
		require.Equal(t, migrate.Down, res.Direction)
		require.Equal(t, []versionName{v8}, resultVersions(res))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7)
		require.Equal(t, []int{1, 2, 3, 4, 5, 6, 7}, appliedVersions(t, m))
		err = m.Validate(ctx)
		require.ErrorIs(t, err, migrate.ErrNotMigrated)
		require.ErrorContains(t, err, v8.fileName())
		for _, v := range []versionName{v1, v2, v3, v4, v5} {
			require.NotContains(t, err.Error(), v.fileName())
		}

		// Up again applies only what is missing.
		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v8}, resultVersions(res))
		require.NoError(t, m.Validate(ctx))

		// Down with MaxSteps -1 removes everything, version table included.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		require.Equal(t, allDown, resultVersions(res))
		requireTables(t, fx, "accord_")
		require.Empty(t, appliedVersions(t, m))
		require.ErrorIs(t, m.Validate(ctx), migrate.ErrNotMigrated)

		// Down on an empty database has nothing to do.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		require.Empty(t, res.Versions)

		// And the full round trip works again.
		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, allVersions, resultVersions(res))
		require.NoError(t, m.Validate(ctx))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
	})
}

func TestMigrator_DownMaxStepsAndTarget(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		_, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)

		// Down to target 1 keeps 001.
		res, err := m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{TargetVersion: 1})
		require.NoError(t, err)
		require.Equal(t, []versionName{v8, v7, v6, v5, v4, v3, v2}, resultVersions(res))
		require.Equal(t, []int{1}, appliedVersions(t, m))
		requireTables(t, fx, "accord_", 1)

		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)

		// MaxSteps 2 reverts the two newest.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: 2})
		require.NoError(t, err)
		require.Equal(t, []versionName{v8, v7}, resultVersions(res))
		require.Equal(t, []int{1, 2, 3, 4, 5, 6}, appliedVersions(t, m))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6)

		// MaxSteps as large as what is left reverts the rest.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: 6})
		require.NoError(t, err)
		require.Equal(t, []versionName{v6, v5, v4, v3, v2, v1}, resultVersions(res))
		requireTables(t, fx, "accord_")
	})
}

func TestMigrator_DryRun(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())

		res, err := m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{DryRun: true})
		require.NoError(t, err)
		require.Equal(t, allVersions, resultVersions(res))
		all := m.All()
		for i := range all {
			require.Equal(t, all[i].SQLUp, res.Versions[i].SQL)
		}
		requireTables(t, fx, "accord_")
		if fx.Schema != "" {
			require.False(t, schemaExists(t, fx), "dry run created the schema")
		}
		require.Empty(t, appliedVersions(t, m))

		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)

		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{DryRun: true, MaxSteps: -1})
		require.NoError(t, err)
		require.Equal(t, allDown, resultVersions(res))
		for i := range all {
			require.Equal(t, all[len(all)-1-i].SQLDown, res.Versions[i].SQL)
		}
		require.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8}, appliedVersions(t, m))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
		require.NoError(t, m.Validate(ctx))
	})
}

func TestMigrator_UpTargetVersionAndMaxSteps(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())

		res, err := m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{TargetVersion: 1})
		require.NoError(t, err)
		require.Equal(t, []versionName{v1}, resultVersions(res))
		require.Equal(t, []int{1}, appliedVersions(t, m))
		requireTables(t, fx, "accord_", 1)
		err = m.Validate(ctx)
		require.ErrorIs(t, err, migrate.ErrNotMigrated)
		for _, v := range []versionName{v2, v3, v4, v5, v6, v7, v8} {
			require.ErrorContains(t, err, v.fileName())
		}
		require.NotContains(t, err.Error(), v1.fileName())

		// Target already reached: nothing to do.
		res, err = m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{TargetVersion: 1})
		require.NoError(t, err)
		require.Empty(t, res.Versions)

		// A target in the middle stops there.
		res, err = m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{TargetVersion: 3})
		require.NoError(t, err)
		require.Equal(t, []versionName{v2, v3}, resultVersions(res))
		requireTables(t, fx, "accord_", 1, 2, 3)

		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v4, v5, v6, v7, v8}, resultVersions(res))
		require.NoError(t, m.Validate(ctx))
	})
	t.Run("MaxSteps", func(t *testing.T) {
		t.Parallel()
		fx := freshSQLite(t)
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		res, err := m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{MaxSteps: 1})
		require.NoError(t, err)
		require.Equal(t, []versionName{v1}, resultVersions(res))
		res, err = m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{MaxSteps: 1})
		require.NoError(t, err)
		require.Equal(t, []versionName{v2}, resultVersions(res))
		res, err = m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{MaxSteps: 2})
		require.NoError(t, err)
		require.Equal(t, []versionName{v3, v4}, resultVersions(res))
		// MaxSteps larger than what is left applies the rest.
		res, err = m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{MaxSteps: 10})
		require.NoError(t, err)
		require.Equal(t, []versionName{v5, v6, v7, v8}, resultVersions(res))
		require.NoError(t, m.Validate(ctx))
	})
}

func TestMigrator_UnknownVersionAndDirection(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		next := m.Latest() + 1

		for _, dir := range []migrate.Direction{migrate.Up, migrate.Down} {
			for _, target := range []int{next, 99, -2} {
				_, err := m.Migrate(ctx, dir, &migrate.MigrateOpts{TargetVersion: target})
				require.ErrorIs(t, err, migrate.ErrUnknownVersion, "%s to %d", dir, target)
				require.ErrorContains(t, err, fmt.Sprint(target))
			}
		}
		_, err := m.SQL(migrate.Up, next)
		require.ErrorIs(t, err, migrate.ErrUnknownVersion)
		_, err = m.SQL(migrate.Down, -1)
		require.ErrorIs(t, err, migrate.ErrUnknownVersion)

		_, err = m.Migrate(ctx, migrate.Direction("sideways"), nil)
		require.ErrorContains(t, err, "sideways")
		_, err = m.SQL(migrate.Direction("sideways"), 0)
		require.ErrorContains(t, err, "sideways")

		// None of this touched the database.
		require.False(t, tableExists(t, fx, "accord_migration"))
		if fx.Schema != "" {
			require.False(t, schemaExists(t, fx))
		}
	})
}

// requireEachVersionReportedOnce checks that concurrent migrators, between
// them, reported every version exactly once: a migrator must not report a
// version another one applied while it waited for the lock.
func requireEachVersionReportedOnce(t *testing.T, results []*migrate.MigrateResult, want []versionName) {
	t.Helper()
	var got []versionName
	for _, res := range results {
		require.NotNil(t, res)
		got = append(got, resultVersions(res)...)
	}
	require.ElementsMatch(t, want, got)
}

// advisoryLockKey mirrors the unexported key migrate locks on PostgreSQL.
const advisoryLockKey = 0x6163636f7264

// TestMigrator_ConcurrentUpPostgres forces two migrators to plan the same
// migrations on a new schema and then queue on the advisory lock: both must
// succeed and leave one correctly migrated schema.
func TestMigrator_ConcurrentUpPostgres(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"up", "down"} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			fx := freshPostgres(t)
			if dir == "down" {
				_, err := newMigrator(t, fx.DB, fx.config()).Migrate(ctx, migrate.Up, nil)
				require.NoError(t, err)
			}

			// Each migrator has its own pool, tagged so that we can see when
			// it waits for the lock.
			app := dbtest.RandomName("accord_conc_")
			url := dbtest.PostgresURL()
			if strings.Contains(url, "?") {
				url += "&application_name=" + app
			} else {
				url += "?application_name=" + app
			}
			const migrators = 2
			ms := make([]*migrate.Migrator, migrators)
			for i := range ms {
				db, _, err := accord.OpenDB(url)
				require.NoError(t, err)
				t.Cleanup(func() { _ = db.Close() })
				ms[i] = newMigrator(t, db, fx.config())
			}

			// Hold the lock so that every migrator plans before any applies.
			lockTx, err := fx.DB.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer func() { _ = lockTx.Rollback() }()
			_, err = lockTx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", int64(advisoryLockKey))
			require.NoError(t, err)

			direction, opts, want := migrate.Up, (*migrate.MigrateOpts)(nil), allVersions
			if dir == "down" {
				direction, opts, want = migrate.Down, &migrate.MigrateOpts{MaxSteps: -1}, allDown
			}
			var wg sync.WaitGroup
			errs := make([]error, migrators)
			results := make([]*migrate.MigrateResult, migrators)
			for i, m := range ms {
				wg.Go(func() { results[i], errs[i] = m.Migrate(ctx, direction, opts) })
			}

			// Wait until both migrators block on the advisory lock.
			for {
				var waiting int
				err := fx.DB.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE application_name = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'`,
					app).Scan(&waiting)
				require.NoError(t, err, "waiting for the migrators to queue on the lock")
				if waiting == migrators {
					break
				}
			}
			require.NoError(t, lockTx.Rollback())
			wg.Wait()

			for i := range ms {
				require.NoError(t, errs[i], "migrator %d", i)
			}
			requireEachVersionReportedOnce(t, results, want)
			m := newMigrator(t, fx.DB, fx.config())
			if dir == "down" {
				requireTables(t, fx, "accord_")
				return
			}
			require.NoError(t, m.Validate(ctx))
			requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
			var rows, triggers int
			require.NoError(t, fx.DB.QueryRowContext(ctx,
				"SELECT count(*) FROM "+fx.table("accord_migration")).Scan(&rows))
			require.Equal(t, m.Latest(), rows)
			require.NoError(t, fx.DB.QueryRowContext(ctx,
				`SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal`,
				fx.table("accord_outbox")).Scan(&triggers))
			require.Equal(t, 1, triggers)
		})
	}
}

// mysqlLockName mirrors the unexported GET_LOCK name migrate takes on MySQL.
// mysqlLockName is the migrators' lock on MySQL for the schema and table
// prefix given as parameters (as migrate.go names it).
const mysqlLockName = "CONCAT('accord_migrate_', SHA1(CONCAT(COALESCE(NULLIF(?, ''), DATABASE()), '.', ?)))"

// TestMigrator_ConcurrentMySQL forces two migrators to plan the same
// migrations on a new MySQL database and then queue on the GET_LOCK lock:
// both must succeed, report each version once between them and leave one
// correctly migrated database.
func TestMigrator_ConcurrentMySQL(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"up", "down"} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			fx := freshMySQL(t)
			if dir == "down" {
				_, err := newMigrator(t, fx.DB, fx.config()).Migrate(ctx, migrate.Up, nil)
				require.NoError(t, err)
			}

			// Each migrator has a pool of one connection, whose id shows in
			// the process list when it waits for the lock.
			const migrators = 2
			ms := make([]*migrate.Migrator, migrators)
			ids := make([]any, migrators)
			for i := range ms {
				db, _, err := accord.OpenDB(dbtest.MySQLURL())
				require.NoError(t, err)
				t.Cleanup(func() { _ = db.Close() })
				db.SetMaxOpenConns(1)
				var id int64
				require.NoError(t, db.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id))
				ids[i] = id
				ms[i] = newMigrator(t, db, fx.config())
			}

			// Hold the lock so that every migrator plans before any applies.
			// It is a session lock: it belongs to this connection.
			lock, err := fx.DB.Conn(ctx)
			require.NoError(t, err)
			defer func() { _ = lock.Close() }()
			var got sql.NullInt64
			require.NoError(t, lock.QueryRowContext(ctx, "SELECT GET_LOCK("+mysqlLockName+", 30)", fx.config().Schema, "accord_").Scan(&got))
			require.Equal(t, int64(1), got.Int64, "take the migration lock")

			direction, opts, want := migrate.Up, (*migrate.MigrateOpts)(nil), allVersions
			if dir == "down" {
				direction, opts, want = migrate.Down, &migrate.MigrateOpts{MaxSteps: -1}, allDown
			}
			var wg sync.WaitGroup
			errs := make([]error, migrators)
			results := make([]*migrate.MigrateResult, migrators)
			for i, m := range ms {
				wg.Go(func() { results[i], errs[i] = m.Migrate(ctx, direction, opts) })
			}

			// Wait until both migrators block in GET_LOCK.
			for {
				var waiting int
				err := fx.DB.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.processlist
					WHERE id IN (?, ?) AND state = 'User lock'`, ids...).Scan(&waiting)
				require.NoError(t, err, "waiting for the migrators to queue on the lock")
				if waiting == migrators {
					break
				}
			}
			// Nothing was applied while the lock was held.
			if dir == "up" {
				require.False(t, schemaExists(t, fx))
			} else {
				requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
			}
			require.NoError(t, lock.QueryRowContext(ctx, "SELECT RELEASE_LOCK("+mysqlLockName+")", fx.config().Schema, "accord_").Scan(&got))
			require.Equal(t, int64(1), got.Int64, "release the migration lock")
			wg.Wait()

			for i := range ms {
				require.NoError(t, errs[i], "migrator %d", i)
			}
			requireEachVersionReportedOnce(t, results, want)
			m := newMigrator(t, fx.DB, fx.config())
			if dir == "down" {
				requireTables(t, fx, "accord_")
				require.Empty(t, appliedVersions(t, m))
				return
			}
			require.NoError(t, m.Validate(ctx))
			requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
			var rows int
			require.NoError(t, fx.DB.QueryRowContext(ctx,
				"SELECT count(*) FROM "+fx.table("accord_migration")).Scan(&rows))
			require.Equal(t, m.Latest(), rows)

			// The migrators released the lock: it is free again for this
			// session (or taken by another test's migrator, never by ours).
			var holder sql.NullInt64
			require.NoError(t, fx.DB.QueryRowContext(ctx, "SELECT IS_USED_LOCK(?)", mysqlLockName).Scan(&holder))
			require.NotContains(t, ids, holder.Int64)
		})
	}
}

// TestMigrator_ManyConcurrentUp runs several migrators at once with no
// forced interleaving.
func TestMigrator_ManyConcurrentUp(t *testing.T) {
	t.Parallel()
	for _, fresh := range []func(*testing.T) freshDB{freshPostgres, freshMySQL} {
		fx := fresh(t)
		t.Run(string(fx.Dialect), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			var wg sync.WaitGroup
			errs := make([]error, 5)
			results := make([]*migrate.MigrateResult, len(errs))
			for i := range errs {
				m := newMigrator(t, fx.DB, fx.config())
				wg.Go(func() { results[i], errs[i] = m.Migrate(ctx, migrate.Up, nil) })
			}
			wg.Wait()
			for i, err := range errs {
				require.NoError(t, err, "migrator %d", i)
			}
			requireEachVersionReportedOnce(t, results, allVersions)
			require.NoError(t, newMigrator(t, fx.DB, fx.config()).Validate(ctx))
		})
	}
}

func TestMigrator_SQL(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		qual := fx.table

		up, err := m.SQL(migrate.Up, 0)
		require.NoError(t, err)
		require.Contains(t, up, "CREATE TABLE IF NOT EXISTS "+qual("accord_migration"))
		require.Contains(t, up, "CREATE TABLE "+qual("accord_outbox"))
		for i, v := range allVersions {
			require.Contains(t, up, fmt.Sprintf("INSERT INTO %s (version, name) VALUES (%d, '%s');", qual("accord_migration"), v.Version, v.Name))
			if i > 0 {
				require.Less(t, strings.Index(up, allVersions[i-1].fileName()+" (up)"), strings.Index(up, v.fileName()+" (up)"))
			}
		}
		require.NotContains(t, up, "{{")
		switch fx.Dialect {
		case accord.Postgres:
			require.Contains(t, up, `CREATE SCHEMA IF NOT EXISTS "`+fx.Schema+`"`)
			require.Contains(t, up, "CREATE FUNCTION "+qual("accord_outbox_notify")+"()")
			require.NotContains(t, up, "`")
		case accord.MySQL:
			require.Contains(t, up, "CREATE DATABASE IF NOT EXISTS `"+fx.Schema+"`;")
			require.NotContains(t, up, `"`, "MySQL reads double quotes as strings")
			require.NotContains(t, up, "CREATE FUNCTION")
		case accord.SQLite:
			require.NotContains(t, up, `"."`, "sqlite names must not be schema-qualified")
			require.NotContains(t, up, "`")
		}

		down, err := m.SQL(migrate.Down, 0)
		require.NoError(t, err)
		for i, v := range allDown {
			for _, table := range versionTables[v.Version] {
				require.Contains(t, down, "DROP TABLE IF EXISTS "+qual("accord_"+table))
			}
			if v.Version != 1 {
				require.Contains(t, down, fmt.Sprintf("DELETE FROM %s WHERE version = %d;", qual("accord_migration"), v.Version))
			}
			if i > 0 {
				require.Less(t, strings.Index(down, allDown[i-1].fileName()+" (down)"), strings.Index(down, v.fileName()+" (down)"))
			}
		}
		require.NotContains(t, down, "WHERE version = 1", "version 1 drops its own table")

		only2, err := m.SQL(migrate.Up, 2)
		require.NoError(t, err)
		require.Contains(t, only2, "002_outbox (up)")
		for _, v := range []versionName{v1, v3, v4, v5, v6, v7, v8} {
			require.NotContains(t, only2, v.fileName())
		}

		// Printing SQL touches nothing.
		require.False(t, tableExists(t, fx, "accord_migration"))
		if fx.Schema != "" {
			require.False(t, schemaExists(t, fx))
		}

		// Applied by hand, as another migration tool would, the printed SQL
		// produces a schema that the migrator accepts.
		_, err = fx.DB.ExecContext(ctx, up)
		require.NoError(t, err)
		require.NoError(t, m.Validate(ctx))
		require.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8}, appliedVersions(t, m))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Empty(t, res.Versions)

		// The outbox the printed SQL created accepts events.
		ob, err := outbox.New(&outbox.Config{Dialect: fx.Dialect, Schema: fx.Schema})
		require.NoError(t, err)
		require.NoError(t, ob.WriteTx(ctx, fx.DB, outbox.Event{Topic: "t", Key: "k", Message: outbox.NewMessage([]byte("x"))}))

		// And the printed down SQL removes everything again.
		_, err = fx.DB.ExecContext(ctx, down)
		require.NoError(t, err)
		requireTables(t, fx, "accord_")
		require.ErrorIs(t, m.Validate(ctx), migrate.ErrNotMigrated)
	})
}

// TestMigrator_SQLMySQLNeedsMultiStatements applies the printed SQL on
// MySQL through pools with and without multiStatements: the driver refuses
// a script on a plain connection (the server sees one statement with a
// syntax error and runs none of it), and accord.OpenDB turns the option on.
func TestMigrator_SQLMySQLNeedsMultiStatements(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fx := freshMySQL(t)
	m := newMigrator(t, fx.DB, fx.config())
	up, err := m.SQL(migrate.Up, 0)
	require.NoError(t, err)

	d, dsn, err := accord.ParseDatabaseURL(dbtest.MySQLURL())
	require.NoError(t, err)
	require.Equal(t, accord.MySQL, d)
	cfg, err := mysql.ParseDSN(dsn)
	require.NoError(t, err)
	require.True(t, cfg.MultiStatements, "accord.OpenDB must allow multi-statement scripts")

	cfg.MultiStatements = false
	single, err := sql.Open("mysql", cfg.FormatDSN())
	require.NoError(t, err)
	t.Cleanup(func() { _ = single.Close() })
	_, err = single.ExecContext(ctx, up)
	require.Error(t, err)
	var myErr *mysql.MySQLError
	require.ErrorAs(t, err, &myErr)
	require.Equal(t, uint16(1064), myErr.Number, "syntax error: %v", err)
	require.False(t, schemaExists(t, fx), "nothing of the script ran")

	// The same script through an accord.OpenDB pool, on its own connection.
	db, _, err := accord.OpenDB(dbtest.MySQLURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.ExecContext(ctx, up)
	require.NoError(t, err)
	require.NoError(t, m.Validate(ctx))
	requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)

	// A failure in a later statement of a script is reported, not lost in
	// the multi-statement results: the version row is the last statement of
	// 002, after a CREATE TABLE that now fails.
	_, err = db.ExecContext(ctx, "DROP TABLE "+fx.table("accord_migration"))
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, up)
	require.ErrorAs(t, err, &myErr)
	require.Equal(t, uint16(1050), myErr.Number, "table exists: %v", err)
	// 001 ran and recorded itself; 002 failed at its CREATE TABLE and did
	// not record itself, nor did anything after it.
	require.Equal(t, []int{1}, appliedVersions(t, m))
}

// closedDB returns a *sql.DB that fails any use, to prove that code does
// not touch the database.
func closedDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dbtest.PostgresURL())
	require.NoError(t, err)
	require.NoError(t, db.Close())
	return db
}

// longestSuffix is the longest name Accord derives from the table prefix
// (an index of migration 003), which bounds the prefix.
const longestSuffix = "dead_letter_consumer"

func TestNew_InvalidConfig(t *testing.T) {
	t.Parallel()
	long60 := strings.Repeat("a", 60)
	tooLong := strings.Repeat("a", sqlstore.MaxIdentifierLength-len(longestSuffix)+1)
	tests := []struct {
		name    string
		cfg     *migrate.Config
		target  error
		mention []string
	}{
		{"EmptyDialect", &migrate.Config{}, accord.ErrUnknownDialect, []string{"dialect"}},
		{"NilConfig", nil, accord.ErrUnknownDialect, []string{"dialect"}},
		{"UnknownDialect", &migrate.Config{Dialect: "oracle"}, accord.ErrUnknownDialect, []string{"dialect", "oracle", "postgres", "mysql", "sqlite"}},
		{"DialectCase", &migrate.Config{Dialect: "MySQL"}, accord.ErrUnknownDialect, []string{"dialect", `"MySQL"`}},
		{"SchemaUppercase", &migrate.Config{Dialect: accord.Postgres, Schema: "Accord"}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "Accord"}},
		{"SchemaSpace", &migrate.Config{Dialect: accord.Postgres, Schema: "my schema"}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"SchemaQuote", &migrate.Config{Dialect: accord.Postgres, Schema: `a"b`}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"SchemaInjection", &migrate.Config{Dialect: accord.Postgres, Schema: "a;drop table x"}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"SchemaTooLong", &migrate.Config{Dialect: accord.Postgres, Schema: strings.Repeat("s", 64)}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "63"}},
		{"SchemaOnSQLite", &migrate.Config{Dialect: accord.SQLite, Schema: "main"}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "sqlite"}},
		{"MySQLSchemaBacktick", &migrate.Config{Dialect: accord.MySQL, Schema: "a`b"}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"MySQLSchemaDash", &migrate.Config{Dialect: accord.MySQL, Schema: "my-db"}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "my-db"}},
		{"MySQLSchemaTooLong", &migrate.Config{Dialect: accord.MySQL, Schema: strings.Repeat("s", 64)}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "63"}},
		{"PrefixUppercase", &migrate.Config{Dialect: accord.SQLite, TablePrefix: "Svc_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixSpace", &migrate.Config{Dialect: accord.Postgres, TablePrefix: "svc prefix_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixQuote", &migrate.Config{Dialect: accord.Postgres, TablePrefix: `svc"_`}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"MySQLPrefixBacktick", &migrate.Config{Dialect: accord.MySQL, TablePrefix: "svc`_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixInjection", &migrate.Config{Dialect: accord.SQLite, TablePrefix: "a;drop table x"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixLeadingDigit", &migrate.Config{Dialect: accord.Postgres, TablePrefix: "1svc_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixTooLongForTables", &migrate.Config{Dialect: accord.Postgres, TablePrefix: long60}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix", long60 + "migration", "63"}},
		{"PrefixOneTooLong", &migrate.Config{Dialect: accord.Postgres, TablePrefix: tooLong}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix", tooLong + longestSuffix, "63"}},
		{"MySQLPrefixOneTooLong", &migrate.Config{Dialect: accord.MySQL, TablePrefix: tooLong}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix", tooLong + longestSuffix, "63"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m, err := migrate.New(closedDB(t), tt.cfg)
			require.Error(t, err)
			require.Nil(t, m)
			require.ErrorIs(t, err, tt.target)
			require.ErrorContains(t, err, "invalid config")
			for _, s := range tt.mention {
				require.Contains(t, strings.ToLower(err.Error()), strings.ToLower(s))
			}
		})
	}

	t.Run("NilDB", func(t *testing.T) {
		t.Parallel()
		_, err := migrate.New(nil, &migrate.Config{Dialect: accord.SQLite})
		require.ErrorContains(t, err, "db is nil")
	})

	t.Run("SeveralProblemsAllReported", func(t *testing.T) {
		t.Parallel()
		_, err := migrate.New(closedDB(t), &migrate.Config{Dialect: accord.SQLite, Schema: "x", TablePrefix: "X"})
		require.ErrorIs(t, err, sqlstore.ErrInvalidIdentifier)
		require.ErrorContains(t, err, "Schema")
		require.ErrorContains(t, err, "TablePrefix")
	})

	t.Run("ValidConfigsDoNotTouchTheDatabase", func(t *testing.T) {
		t.Parallel()
		longest := strings.Repeat("a", sqlstore.MaxIdentifierLength-len(longestSuffix))
		for _, cfg := range []*migrate.Config{
			{Dialect: accord.Postgres},
			{Dialect: accord.Postgres, Schema: "svc_1", TablePrefix: "svc_"},
			{Dialect: accord.Postgres, TablePrefix: longest},
			{Dialect: accord.MySQL},
			{Dialect: accord.MySQL, Schema: "svc_1", TablePrefix: "svc_"},
			{Dialect: accord.MySQL, Schema: strings.Repeat("s", 63), TablePrefix: longest},
			{Dialect: accord.SQLite, TablePrefix: "_x"},
			{Dialect: accord.SQLite, TablePrefix: longest},
		} {
			_, err := migrate.New(closedDB(t), cfg)
			require.NoError(t, err, "%+v", cfg)
		}
	})
}

// TestMigrator_LongestTablePrefix migrates with the longest prefix New
// accepts: every derived name (tables, indexes, constraints, triggers) must
// fit the databases' limits without being truncated.
func TestMigrator_LongestTablePrefix(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		prefix := strings.Repeat("p", sqlstore.MaxIdentifierLength-len(longestSuffix))
		m := newMigrator(t, fx.DB, &migrate.Config{Dialect: fx.Dialect, Schema: fx.Schema, TablePrefix: prefix})
		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, allVersions, resultVersions(res))
		require.NoError(t, m.Validate(ctx))
		requireTables(t, fx, prefix, 1, 2, 3, 4, 5, 6, 7, 8)

		ob, err := outbox.New(&outbox.Config{Dialect: fx.Dialect, Schema: fx.Schema, TablePrefix: prefix})
		require.NoError(t, err)
		require.NoError(t, ob.WriteTx(ctx, fx.DB, outbox.Event{Topic: "orders", Message: outbox.NewMessage([]byte("x"))}))

		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		require.Equal(t, allDown, resultVersions(res))
		requireTables(t, fx, prefix)
	})
}

func TestConfig_WithDefaults(t *testing.T) {
	t.Parallel()
	var nilCfg *migrate.Config
	c := nilCfg.WithDefaults()
	require.Equal(t, migrate.TablePrefixDefault, c.TablePrefix)
	require.NotNil(t, c.Logger)

	in := &migrate.Config{Dialect: accord.SQLite, TablePrefix: "svc_"}
	out := in.WithDefaults()
	require.Equal(t, "svc_", out.TablePrefix)
	require.Nil(t, in.Logger, "WithDefaults must not modify its receiver")
}

func TestMigrator_CustomTablePrefix(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, &migrate.Config{Dialect: fx.Dialect, Schema: fx.Schema, TablePrefix: "svc_"})

		sqlUp, err := m.SQL(migrate.Up, 0)
		require.NoError(t, err)
		require.Contains(t, sqlUp, quote(fx.Dialect, "svc_outbox"))
		require.NotContains(t, sqlUp, "accord_")

		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, allVersions, resultVersions(res))
		requireTables(t, fx, "svc_", 1, 2, 3, 4, 5, 6, 7, 8)
		requireTables(t, fx, "accord_")
		require.NoError(t, m.Validate(ctx))

		// An installation with the default prefix is a different one.
		other := newMigrator(t, fx.DB, fx.config())
		require.ErrorIs(t, other.Validate(ctx), migrate.ErrNotMigrated)

		// The outbox writes into the prefixed table.
		ob, err := outbox.New(&outbox.Config{Dialect: fx.Dialect, Schema: fx.Schema, TablePrefix: "svc_"})
		require.NoError(t, err)
		tx, err := fx.DB.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, ob.WriteTx(ctx, tx, outbox.Event{Topic: "orders", Key: "o-1", Message: outbox.NewMessage([]byte("{}"))}))
		require.NoError(t, tx.Commit())
		var n int
		require.NoError(t, fx.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+fx.table("svc_outbox")+" WHERE topic = 'orders'").Scan(&n))
		require.Equal(t, 1, n)

		// Both installations side by side in one schema: the default one
		// migrates next to the prefixed one (no name collides, for example
		// MySQL's schema-wide CHECK constraint names).
		_, err = other.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.NoError(t, other.Validate(ctx))
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)

		// Down with the prefix removes the prefixed tables only.
		_, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		requireTables(t, fx, "svc_")
		requireTables(t, fx, "accord_", 1, 2, 3, 4, 5, 6, 7, 8)
	})
}

func TestMigrator_Logger(t *testing.T) {
	t.Parallel()
	fx := freshSQLite(t)
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	m := newMigrator(t, fx.DB, &migrate.Config{Dialect: fx.Dialect, Logger: logger})
	_, err := m.Migrate(context.Background(), migrate.Up, nil)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, len(allVersions))
	for i, v := range allVersions {
		require.Contains(t, lines[i], fmt.Sprintf("version=%d ", v.Version))
		require.Contains(t, lines[i], "name="+v.Name)
	}

	// A dry run applies nothing and logs nothing.
	buf.Reset()
	_, err = m.Migrate(context.Background(), migrate.Down, &migrate.MigrateOpts{DryRun: true})
	require.NoError(t, err)
	require.Empty(t, buf.String())
}

func TestMigrator_ApplyFailureRollsBack(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		_, err := m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{TargetVersion: 1})
		require.NoError(t, err)

		// A conflicting table makes 002 fail; its version row must not be
		// recorded and the failure must name the migration.
		_, err = fx.DB.ExecContext(ctx, "CREATE TABLE "+fx.table("accord_outbox")+" (x INTEGER)")
		require.NoError(t, err)
		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.ErrorContains(t, err, "002_outbox")
		require.Equal(t, []int{1}, appliedVersions(t, m))
		require.False(t, errors.Is(err, migrate.ErrNotMigrated))
	})
}

// TestMigrator_ApplyFailureMidMigration makes the second statement of 003
// fail. The version is never recorded, and the error names the migration.
// PostgreSQL and SQLite roll the first statement back; MySQL cannot (DDL
// commits implicitly, as accord.MySQL documents), so its first table stays
// and must be removed by hand before Up can succeed.
func TestMigrator_ApplyFailureMidMigration(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())
		_, err := m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{TargetVersion: 2})
		require.NoError(t, err)

		_, err = fx.DB.ExecContext(ctx, "CREATE TABLE "+fx.table("accord_inbox_attempt")+" (x INTEGER)")
		require.NoError(t, err)
		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.ErrorContains(t, err, "003_inbox")
		require.Equal(t, []int{1, 2}, appliedVersions(t, m))
		require.True(t, tableExists(t, fx, "accord_outbox"))
		require.False(t, tableExists(t, fx, "accord_dead_letter"), "statements after the failure ran")
		require.Equal(t, fx.Dialect == accord.MySQL, tableExists(t, fx, "accord_inbox"),
			"the statement before the failure is kept on MySQL only")

		// Repaired, the migration applies.
		_, err = fx.DB.ExecContext(ctx, "DROP TABLE "+fx.table("accord_inbox_attempt"))
		require.NoError(t, err)
		if fx.Dialect == accord.MySQL {
			_, err = m.Migrate(ctx, migrate.Up, nil)
			require.ErrorContains(t, err, "003_inbox", "the half-applied migration fails again")
			_, err = fx.DB.ExecContext(ctx, "DROP TABLE "+fx.table("accord_inbox"))
			require.NoError(t, err)
		}
		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v3, v4, v5, v6, v7, v8}, resultVersions(res))
		require.NoError(t, m.Validate(ctx))
	})
}

// TestMigrator_MySQLAppliedAtTimeZone reads the applied time through a
// session whose time zone is far from UTC: List must still report the
// instant the migration ran.
func TestMigrator_MySQLAppliedAtTimeZone(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fx := freshMySQL(t)
	open := func(tz string) *sql.DB {
		url := dbtest.MySQLURL()
		sep := "?"
		if strings.Contains(url, "?") {
			sep = "&"
		}
		db, _, err := accord.OpenDB(url + sep + "time_zone=" + neturl.QueryEscape("'"+tz+"'"))
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		var sessionTZ string
		require.NoError(t, db.QueryRowContext(ctx, "SELECT @@session.time_zone").Scan(&sessionTZ))
		require.Equal(t, tz, sessionTZ)
		return db
	}

	// Written at +09:00, read at +09:00 and at -07:00.
	_, err := newMigrator(t, open("+09:00"), fx.config()).Migrate(ctx, migrate.Up, nil)
	require.NoError(t, err)
	applied := time.Now()
	for _, tz := range []string{"+09:00", "-07:00"} {
		list, err := newMigrator(t, open(tz), fx.config()).List(ctx)
		require.NoError(t, err)
		require.Len(t, list, len(allVersions))
		for _, s := range list {
			require.True(t, s.Applied)
			require.WithinDuration(t, applied, s.AppliedAt, time.Minute, "version %d read at %s", s.Version, tz)
		}
	}
}
