package migrate_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/internal/dbtest"
	"github.com/accordgo/accord/internal/sqlstore"
	"github.com/accordgo/accord/migrate"
	"github.com/accordgo/accord/outbox"
)

// freshDB is an empty, not yet migrated place for an Accord installation: a
// new PostgreSQL schema name (the schema itself does not exist yet) or a new
// SQLite file.
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
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		f(t, freshSQLite(t))
	})
}

func (fx freshDB) config() *migrate.Config {
	return &migrate.Config{Dialect: fx.Dialect, Schema: fx.Schema}
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
	case accord.SQLite:
		require.NoError(t, fx.DB.QueryRowContext(ctx,
			`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&n))
	default:
		t.Fatalf("unknown dialect %q", fx.Dialect)
	}
	return n > 0
}

func schemaExists(t *testing.T, db *sql.DB, schema string) bool {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRowContext(context.Background(),
		`SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = $1`, schema).Scan(&n))
	return n > 0
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
)

func TestMigrator_AllAndLatest(t *testing.T) {
	t.Parallel()
	for _, d := range []accord.Dialect{accord.Postgres, accord.SQLite} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			m := newMigrator(t, closedDB(t), &migrate.Config{Dialect: d})
			require.Equal(t, 2, m.Latest())
			all := m.All()
			require.Len(t, all, 2)
			require.Equal(t, v1, versionName{all[0].Version, all[0].Name})
			require.Equal(t, v2, versionName{all[1].Version, all[1].Name})
			for _, mig := range all {
				require.NotEmpty(t, mig.SQLUp)
				require.NotEmpty(t, mig.SQLDown)
				require.NotContains(t, mig.SQLUp, "{{", "template not rendered")
				require.NotContains(t, mig.SQLDown, "{{", "template not rendered")
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
		require.ErrorContains(t, err, "001_migration_table")
		require.ErrorContains(t, err, "002_outbox")
		require.Empty(t, appliedVersions(t, m))

		before := time.Now().Add(-time.Minute)
		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, migrate.Up, res.Direction)
		require.Equal(t, []versionName{v1, v2}, resultVersions(res))
		for _, v := range res.Versions {
			require.NotEmpty(t, v.SQL)
		}

		list, err := m.List(ctx)
		require.NoError(t, err)
		require.Len(t, list, 2)
		for i, s := range list {
			require.Equal(t, i+1, s.Version)
			require.True(t, s.Applied, "version %d", s.Version)
			require.True(t, s.AppliedAt.After(before), "version %d applied at %v", s.Version, s.AppliedAt)
			require.True(t, s.AppliedAt.Before(time.Now().Add(time.Minute)), "version %d applied at %v", s.Version, s.AppliedAt)
		}
		require.NoError(t, m.Validate(ctx))
		require.True(t, tableExists(t, fx, "accord_migration"))
		require.True(t, tableExists(t, fx, "accord_outbox"))

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

		// Down without options reverts one step: only 002.
		res, err := m.Migrate(ctx, migrate.Down, nil)
		require.NoError(t, err)
		require.Equal(t, migrate.Down, res.Direction)
		require.Equal(t, []versionName{v2}, resultVersions(res))
		require.False(t, tableExists(t, fx, "accord_outbox"))
		require.True(t, tableExists(t, fx, "accord_migration"))
		require.Equal(t, []int{1}, appliedVersions(t, m))
		err = m.Validate(ctx)
		require.ErrorIs(t, err, migrate.ErrNotMigrated)
		require.ErrorContains(t, err, "002_outbox")
		require.NotContains(t, err.Error(), "001_migration_table")

		// Up again applies only what is missing.
		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v2}, resultVersions(res))
		require.NoError(t, m.Validate(ctx))

		// Down with MaxSteps -1 removes everything, version table included.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		require.Equal(t, []versionName{v2, v1}, resultVersions(res))
		require.False(t, tableExists(t, fx, "accord_outbox"))
		require.False(t, tableExists(t, fx, "accord_migration"))
		require.Empty(t, appliedVersions(t, m))
		require.ErrorIs(t, m.Validate(ctx), migrate.ErrNotMigrated)

		// Down on an empty database has nothing to do.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		require.Empty(t, res.Versions)

		// And the full round trip works again.
		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v1, v2}, resultVersions(res))
		require.NoError(t, m.Validate(ctx))
		require.True(t, tableExists(t, fx, "accord_outbox"))
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
		require.Equal(t, []versionName{v2}, resultVersions(res))
		require.Equal(t, []int{1}, appliedVersions(t, m))

		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)

		// MaxSteps 2 reverts both.
		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: 2})
		require.NoError(t, err)
		require.Equal(t, []versionName{v2, v1}, resultVersions(res))
		require.False(t, tableExists(t, fx, "accord_migration"))
	})
}

func TestMigrator_DryRun(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())

		res, err := m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{DryRun: true})
		require.NoError(t, err)
		require.Equal(t, []versionName{v1, v2}, resultVersions(res))
		all := m.All()
		require.Equal(t, all[0].SQLUp, res.Versions[0].SQL)
		require.Equal(t, all[1].SQLUp, res.Versions[1].SQL)
		require.False(t, tableExists(t, fx, "accord_migration"))
		require.False(t, tableExists(t, fx, "accord_outbox"))
		if fx.Dialect == accord.Postgres {
			require.False(t, schemaExists(t, fx.DB, fx.Schema), "dry run created the schema")
		}
		require.Empty(t, appliedVersions(t, m))

		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)

		res, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{DryRun: true, MaxSteps: -1})
		require.NoError(t, err)
		require.Equal(t, []versionName{v2, v1}, resultVersions(res))
		require.Equal(t, all[1].SQLDown, res.Versions[0].SQL)
		require.Equal(t, []int{1, 2}, appliedVersions(t, m))
		require.True(t, tableExists(t, fx, "accord_outbox"))
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
		require.True(t, tableExists(t, fx, "accord_migration"))
		require.False(t, tableExists(t, fx, "accord_outbox"))
		err = m.Validate(ctx)
		require.ErrorIs(t, err, migrate.ErrNotMigrated)
		require.ErrorContains(t, err, "002_outbox")
		require.NotContains(t, err.Error(), "001_migration_table")

		// Target already reached: nothing to do.
		res, err = m.Migrate(ctx, migrate.Up, &migrate.MigrateOpts{TargetVersion: 1})
		require.NoError(t, err)
		require.Empty(t, res.Versions)

		res, err = m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v2}, resultVersions(res))
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
		require.NoError(t, m.Validate(ctx))
	})
}

func TestMigrator_UnknownVersionAndDirection(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())

		for _, dir := range []migrate.Direction{migrate.Up, migrate.Down} {
			for _, target := range []int{3, 99, -2} {
				_, err := m.Migrate(ctx, dir, &migrate.MigrateOpts{TargetVersion: target})
				require.ErrorIs(t, err, migrate.ErrUnknownVersion, "%s to %d", dir, target)
				require.ErrorContains(t, err, fmt.Sprint(target))
			}
		}
		_, err := m.SQL(migrate.Up, 3)
		require.ErrorIs(t, err, migrate.ErrUnknownVersion)
		_, err = m.SQL(migrate.Down, -1)
		require.ErrorIs(t, err, migrate.ErrUnknownVersion)

		_, err = m.Migrate(ctx, migrate.Direction("sideways"), nil)
		require.ErrorContains(t, err, "sideways")
		_, err = m.SQL(migrate.Direction("sideways"), 0)
		require.ErrorContains(t, err, "sideways")

		// None of this touched the database.
		require.False(t, tableExists(t, fx, "accord_migration"))
		if fx.Dialect == accord.Postgres {
			require.False(t, schemaExists(t, fx.DB, fx.Schema))
		}
	})
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

			direction, opts := migrate.Up, (*migrate.MigrateOpts)(nil)
			if dir == "down" {
				direction, opts = migrate.Down, &migrate.MigrateOpts{MaxSteps: -1}
			}
			var wg sync.WaitGroup
			errs := make([]error, migrators)
			for i, m := range ms {
				wg.Go(func() { _, errs[i] = m.Migrate(ctx, direction, opts) })
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
			m := newMigrator(t, fx.DB, fx.config())
			if dir == "down" {
				require.False(t, tableExists(t, fx, "accord_migration"))
				require.False(t, tableExists(t, fx, "accord_outbox"))
				return
			}
			require.NoError(t, m.Validate(ctx))
			var rows, triggers int
			require.NoError(t, fx.DB.QueryRowContext(ctx,
				`SELECT count(*) FROM "`+fx.Schema+`"."accord_migration"`).Scan(&rows))
			require.Equal(t, 2, rows)
			require.NoError(t, fx.DB.QueryRowContext(ctx,
				`SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal`,
				`"`+fx.Schema+`"."accord_outbox"`).Scan(&triggers))
			require.Equal(t, 1, triggers)
		})
	}
}

// TestMigrator_ManyConcurrentUpPostgres runs several migrators at once with
// no forced interleaving.
func TestMigrator_ManyConcurrentUpPostgres(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fx := freshPostgres(t)
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		m := newMigrator(t, fx.DB, fx.config())
		wg.Go(func() { _, errs[i] = m.Migrate(ctx, migrate.Up, nil) })
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "migrator %d", i)
	}
	require.NoError(t, newMigrator(t, fx.DB, fx.config()).Validate(ctx))
}

func TestMigrator_SQL(t *testing.T) {
	t.Parallel()
	eachDialect(t, func(t *testing.T, fx freshDB) {
		ctx := context.Background()
		m := newMigrator(t, fx.DB, fx.config())

		qual := func(table string) string {
			if fx.Schema != "" {
				return `"` + fx.Schema + `"."` + table + `"`
			}
			return `"` + table + `"`
		}

		up, err := m.SQL(migrate.Up, 0)
		require.NoError(t, err)
		require.Contains(t, up, "CREATE TABLE IF NOT EXISTS "+qual("accord_migration"))
		require.Contains(t, up, "CREATE TABLE "+qual("accord_outbox"))
		require.Contains(t, up, "INSERT INTO "+qual("accord_migration")+" (version, name) VALUES (1, 'migration_table');")
		require.Contains(t, up, "INSERT INTO "+qual("accord_migration")+" (version, name) VALUES (2, 'outbox');")
		require.Less(t, strings.Index(up, "001_migration_table (up)"), strings.Index(up, "002_outbox (up)"))
		require.NotContains(t, up, "{{")
		if fx.Dialect == accord.Postgres {
			require.Contains(t, up, `CREATE SCHEMA IF NOT EXISTS "`+fx.Schema+`"`)
			require.Contains(t, up, "CREATE FUNCTION "+qual("accord_outbox_notify")+"()")
		} else {
			require.NotContains(t, up, `"."`, "sqlite names must not be schema-qualified")
		}

		down, err := m.SQL(migrate.Down, 0)
		require.NoError(t, err)
		require.Contains(t, down, "DROP TABLE IF EXISTS "+qual("accord_outbox"))
		require.Contains(t, down, "DROP TABLE IF EXISTS "+qual("accord_migration"))
		require.Contains(t, down, "DELETE FROM "+qual("accord_migration")+" WHERE version = 2;")
		require.NotContains(t, down, "WHERE version = 1", "version 1 drops its own table")
		require.Less(t, strings.Index(down, "002_outbox (down)"), strings.Index(down, "001_migration_table (down)"))

		only2, err := m.SQL(migrate.Up, 2)
		require.NoError(t, err)
		require.Contains(t, only2, "002_outbox (up)")
		require.NotContains(t, only2, "001_migration_table")

		// Printing SQL touches nothing.
		require.False(t, tableExists(t, fx, "accord_migration"))

		// Applied by hand, as another migration tool would, the printed SQL
		// produces a schema that the migrator accepts.
		_, err = fx.DB.ExecContext(ctx, up)
		require.NoError(t, err)
		require.NoError(t, m.Validate(ctx))
		require.Equal(t, []int{1, 2}, appliedVersions(t, m))
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
		require.False(t, tableExists(t, fx, "accord_outbox"))
		require.False(t, tableExists(t, fx, "accord_migration"))
		require.ErrorIs(t, m.Validate(ctx), migrate.ErrNotMigrated)
	})
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

func TestNew_InvalidConfig(t *testing.T) {
	t.Parallel()
	long60 := strings.Repeat("a", 60)
	tests := []struct {
		name    string
		cfg     *migrate.Config
		target  error
		mention []string
	}{
		{"EmptyDialect", &migrate.Config{}, accord.ErrUnknownDialect, []string{"dialect"}},
		{"NilConfig", nil, accord.ErrUnknownDialect, []string{"dialect"}},
		{"UnknownDialect", &migrate.Config{Dialect: "mysql"}, accord.ErrUnknownDialect, []string{"dialect", "mysql"}},
		{"SchemaUppercase", &migrate.Config{Dialect: accord.Postgres, Schema: "Accord"}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "Accord"}},
		{"SchemaSpace", &migrate.Config{Dialect: accord.Postgres, Schema: "my schema"}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"SchemaQuote", &migrate.Config{Dialect: accord.Postgres, Schema: `a"b`}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"SchemaInjection", &migrate.Config{Dialect: accord.Postgres, Schema: "a;drop table x"}, sqlstore.ErrInvalidIdentifier, []string{"Schema"}},
		{"SchemaTooLong", &migrate.Config{Dialect: accord.Postgres, Schema: strings.Repeat("s", 64)}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "63"}},
		{"SchemaOnSQLite", &migrate.Config{Dialect: accord.SQLite, Schema: "main"}, sqlstore.ErrInvalidIdentifier, []string{"Schema", "sqlite"}},
		{"PrefixUppercase", &migrate.Config{Dialect: accord.SQLite, TablePrefix: "Svc_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixSpace", &migrate.Config{Dialect: accord.Postgres, TablePrefix: "svc prefix_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixQuote", &migrate.Config{Dialect: accord.Postgres, TablePrefix: `svc"_`}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixInjection", &migrate.Config{Dialect: accord.SQLite, TablePrefix: "a;drop table x"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixLeadingDigit", &migrate.Config{Dialect: accord.Postgres, TablePrefix: "1svc_"}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix"}},
		{"PrefixTooLongForTables", &migrate.Config{Dialect: accord.Postgres, TablePrefix: long60}, sqlstore.ErrInvalidIdentifier, []string{"TablePrefix", long60 + "migration", "63"}},
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
		for _, cfg := range []*migrate.Config{
			{Dialect: accord.Postgres},
			{Dialect: accord.Postgres, Schema: "svc_1", TablePrefix: "svc_"},
			{Dialect: accord.Postgres, TablePrefix: strings.Repeat("a", 63-len("outbox_notify"))},
			{Dialect: accord.SQLite, TablePrefix: "_x"},
		} {
			_, err := migrate.New(closedDB(t), cfg)
			require.NoError(t, err, "%+v", cfg)
		}
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
		require.Contains(t, sqlUp, `"svc_outbox"`)
		require.NotContains(t, sqlUp, "accord_")

		res, err := m.Migrate(ctx, migrate.Up, nil)
		require.NoError(t, err)
		require.Equal(t, []versionName{v1, v2}, resultVersions(res))
		require.True(t, tableExists(t, fx, "svc_migration"))
		require.True(t, tableExists(t, fx, "svc_outbox"))
		require.False(t, tableExists(t, fx, "accord_migration"))
		require.False(t, tableExists(t, fx, "accord_outbox"))
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
		table := `"svc_outbox"`
		if fx.Schema != "" {
			table = `"` + fx.Schema + `".` + table
		}
		var n int
		require.NoError(t, fx.DB.QueryRowContext(ctx, "SELECT count(*) FROM "+table+" WHERE topic = 'orders'").Scan(&n))
		require.Equal(t, 1, n)

		// Down with the prefix removes the prefixed tables only.
		_, err = m.Migrate(ctx, migrate.Down, &migrate.MigrateOpts{MaxSteps: -1})
		require.NoError(t, err)
		require.False(t, tableExists(t, fx, "svc_outbox"))
		require.False(t, tableExists(t, fx, "svc_migration"))
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
	require.Len(t, lines, 2)
	require.Contains(t, lines[0], "version=1")
	require.Contains(t, lines[1], "version=2")

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
		table := `"accord_outbox"`
		if fx.Schema != "" {
			table = `"` + fx.Schema + `".` + table
		}
		_, err = fx.DB.ExecContext(ctx, "CREATE TABLE "+table+" (x INTEGER)")
		require.NoError(t, err)
		_, err = m.Migrate(ctx, migrate.Up, nil)
		require.ErrorContains(t, err, "002_outbox")
		require.Equal(t, []int{1}, appliedVersions(t, m))
		require.False(t, errors.Is(err, migrate.ErrNotMigrated))
	})
}
