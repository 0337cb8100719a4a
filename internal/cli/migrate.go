package cli

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/migrate"
)

func (a *app) newMigrateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, revert, list, validate or print Accord's schema migrations",
		Long: `Manage the tables Accord needs (the outbox and the migration version table).
Migrations are numbered; each runs in its own transaction with its version row.
Use the same --schema and --table-prefix as the relay and your application.

` + settingsHelp,
		Args: cobra.ArbitraryArgs,
		RunE: groupRunE,
	}
	cmd.AddCommand(a.newMigrateUpCmd(), a.newMigrateDownCmd(), a.newMigrateListCmd(),
		a.newMigrateSQLCmd(), a.newMigrateValidateCmd())
	return cmd
}

// openMigrator opens the database the flags name and returns a Migrator on
// it and a function that closes it.
func openMigrator(f *dbFlags) (*migrate.Migrator, func(), error) {
	if err := f.requireURL(); err != nil {
		return nil, nil, err
	}
	db, dialect, err := accord.OpenDB(f.url)
	if err != nil {
		return nil, nil, usageErrorf("--database-url: %w", err)
	}
	m, err := migrate.New(db, &migrate.Config{Dialect: dialect, Schema: f.schema, TablePrefix: f.tablePrefix})
	if err != nil {
		_ = db.Close()
		return nil, nil, usageError(err)
	}
	return m, func() { _ = db.Close() }, nil
}

// migrateErr classifies an error of Migrator.Migrate or Migrator.SQL.
func migrateErr(err error) error {
	if errors.Is(err, migrate.ErrUnknownVersion) {
		return usageError(err)
	}
	return err
}

func formatDuration(d time.Duration) string {
	if d < time.Millisecond {
		return d.Round(time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func (a *app) newMigrateUpCmd() *cobra.Command {
	var (
		db            dbFlags
		targetVersion int
		maxSteps      int
		dryRun        bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations",
		Long: `Apply the migrations that have not run yet, oldest first: all of them unless
--target-version or --max-steps bound the run. Concurrent runs against one
PostgreSQL or MySQL database are serialized.

` + settingsHelp,
		Args: cobra.NoArgs,
	}
	db.register(cmd, databaseURLHelp+" (required)")
	cmd.Flags().IntVar(&targetVersion, "target-version", 0, "newest version to apply (0 means the latest)")
	cmd.Flags().IntVar(&maxSteps, "max-steps", 0, "most migrations to apply (0 means no bound)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be applied without touching the database")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if targetVersion < 0 || maxSteps < 0 {
			return usageErrorf("--target-version and --max-steps must not be negative")
		}
		m, closeDB, err := openMigrator(&db)
		if err != nil {
			return err
		}
		defer closeDB()
		res, err := m.Migrate(cmd.Context(), migrate.Up, &migrate.MigrateOpts{
			DryRun: dryRun, MaxSteps: maxSteps, TargetVersion: targetVersion,
		})
		if res != nil {
			a.printMigrateResult(res, dryRun)
		}
		if err != nil {
			return migrateErr(err)
		}
		if len(res.Versions) == 0 {
			fmt.Fprintf(a.stdout, "nothing to apply: the database is at the requested version (latest is %03d)\n", m.Latest())
		}
		return nil
	}
	return cmd
}

func (a *app) newMigrateDownCmd() *cobra.Command {
	var (
		db            dbFlags
		targetVersion int
		maxSteps      int
		all           bool
		dryRun        bool
	)
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Revert applied migrations (one by default)",
		Long: `Revert applied migrations, newest first: one step unless --max-steps,
--target-version or --all say otherwise. Reverting migration 001 drops the
version table; reverting the outbox migration drops the outbox and every
unpublished event in it.

` + settingsHelp,
		Args: cobra.NoArgs,
	}
	db.register(cmd, databaseURLHelp+" (required)")
	cmd.Flags().IntVar(&maxSteps, "max-steps", 1, "most migrations to revert")
	cmd.Flags().IntVar(&targetVersion, "target-version", 0, "revert until this version is the newest applied one (0 reverts everything, like --all)")
	cmd.Flags().BoolVar(&all, "all", false, "revert every migration, including the version table")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be reverted without touching the database")
	cmd.MarkFlagsMutuallyExclusive("all", "max-steps", "target-version")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		opts := &migrate.MigrateOpts{DryRun: dryRun, MaxSteps: maxSteps}
		switch {
		case all:
			opts.MaxSteps = -1
		case cmd.Flags().Changed("target-version"):
			if targetVersion < 0 {
				return usageErrorf("--target-version must not be negative")
			}
			opts.MaxSteps, opts.TargetVersion = 0, targetVersion
			if targetVersion == 0 {
				opts.MaxSteps = -1
			}
		case maxSteps < 1:
			return usageErrorf("--max-steps must be at least 1 (use --all to revert everything)")
		}
		m, closeDB, err := openMigrator(&db)
		if err != nil {
			return err
		}
		defer closeDB()
		res, err := m.Migrate(cmd.Context(), migrate.Down, opts)
		if res != nil {
			a.printMigrateResult(res, dryRun)
		}
		if err != nil {
			return migrateErr(err)
		}
		if len(res.Versions) == 0 {
			fmt.Fprintln(a.stdout, "nothing to revert")
		}
		return nil
	}
	return cmd
}

func (a *app) printMigrateResult(res *migrate.MigrateResult, dryRun bool) {
	verb := map[migrate.Direction]string{migrate.Up: "applied", migrate.Down: "reverted"}[res.Direction]
	if dryRun {
		verb = map[migrate.Direction]string{migrate.Up: "would apply", migrate.Down: "would revert"}[res.Direction]
	}
	for _, v := range res.Versions {
		if dryRun {
			fmt.Fprintf(a.stdout, "%s %03d_%s\n", verb, v.Version, v.Name)
		} else {
			fmt.Fprintf(a.stdout, "%s %03d_%s (%s)\n", verb, v.Version, v.Name, formatDuration(v.Duration))
		}
	}
}

func (a *app) newMigrateListCmd() *cobra.Command {
	var db dbFlags
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List migrations and whether each is applied",
		Long: `List every migration this version of Accord knows, oldest first, with whether
it is applied and when.

` + settingsHelp,
		Args: cobra.NoArgs,
	}
	db.register(cmd, databaseURLHelp+" (required)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		m, closeDB, err := openMigrator(&db)
		if err != nil {
			return err
		}
		defer closeDB()
		list, err := m.List(cmd.Context())
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "VERSION\tNAME\tSTATUS\tAPPLIED AT")
		for _, s := range list {
			status, at := "pending", "-"
			if s.Applied {
				status = "applied"
				if !s.AppliedAt.IsZero() {
					at = s.AppliedAt.UTC().Format(time.RFC3339)
				}
			}
			fmt.Fprintf(w, "%03d\t%s\t%s\t%s\n", s.Version, s.Name, status, at)
		}
		return w.Flush()
	}
	return cmd
}

func (a *app) newMigrateValidateCmd() *cobra.Command {
	var db dbFlags
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check that every migration is applied (exit code 1 if not)",
		Long: `Check that every migration this version of Accord needs is applied. Exits
with code 0 if so, and with code 1 and the missing versions otherwise: useful
as a deployment gate before starting the relay or the application.

` + settingsHelp,
		Args: cobra.NoArgs,
	}
	db.register(cmd, databaseURLHelp+" (required)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		m, closeDB, err := openMigrator(&db)
		if err != nil {
			return err
		}
		defer closeDB()
		if err := m.Validate(cmd.Context()); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "ok: all %d migrations are applied (latest is %03d)\n", len(m.All()), m.Latest())
		return nil
	}
	return cmd
}

func (a *app) newMigrateSQLCmd() *cobra.Command {
	var (
		db        dbFlags
		dialect   string
		direction string
		version   int
	)
	cmd := &cobra.Command{
		Use:   "sql",
		Short: "Print the SQL of migrations, for your own migration tool",
		Long: `Print the SQL of one migration (--version) or of all of them, including the
statements that record each version, for teams that apply migrations with
their own tool. Up prints oldest first, down newest first.

It does not connect to the database: --database-url only selects the dialect,
and --dialect can be given instead.

` + settingsHelp,
		Example: `  accord migrate sql --dialect postgres --schema app > accord_up.sql
  accord migrate sql --dialect sqlite --direction down --version 2`,
		Args: cobra.NoArgs,
	}
	db.register(cmd, databaseURLHelp+" (only its dialect is used; or give --dialect)")
	cmd.Flags().StringVar(&dialect, "dialect", "", "SQL dialect when no --database-url is given: postgres, mysql or sqlite")
	cmd.Flags().StringVar(&direction, "direction", "up", "up or down")
	cmd.Flags().IntVar(&version, "version", 0, "migration version to print (0 means all)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		d, err := sqlDialect(db.url, dialect)
		if err != nil {
			return err
		}
		dir := migrate.Direction(strings.ToLower(direction))
		if dir != migrate.Up && dir != migrate.Down {
			return usageErrorf("--direction %q: want up or down", direction)
		}
		if version < 0 {
			return usageErrorf("--version must not be negative")
		}
		// Migrator.SQL never touches the database, but migrate.New wants a
		// handle: give it one that cannot connect.
		handle := sql.OpenDB(noConnector{})
		defer handle.Close()
		m, err := migrate.New(handle, &migrate.Config{Dialect: d, Schema: db.schema, TablePrefix: db.tablePrefix})
		if err != nil {
			return usageError(err)
		}
		out, err := m.SQL(dir, version)
		if err != nil {
			return migrateErr(err)
		}
		_, err = fmt.Fprint(a.stdout, out)
		return err
	}
	return cmd
}

// sqlDialect picks the dialect of `migrate sql` from a database URL or a
// dialect name.
func sqlDialect(url, name string) (accord.Dialect, error) {
	var fromName, fromURL accord.Dialect
	if name != "" {
		fromName = accord.Dialect(strings.ToLower(name))
		if err := fromName.Validate(); err != nil {
			return "", usageErrorf("--dialect: %w", err)
		}
	}
	if url != "" {
		d, _, err := accord.ParseDatabaseURL(url)
		if err != nil {
			return "", usageErrorf("--database-url: %w", err)
		}
		fromURL = d
	}
	switch {
	case fromName != "" && fromURL != "" && fromName != fromURL:
		return "", usageErrorf("--dialect %s does not match the %s --database-url", fromName, fromURL)
	case fromName != "":
		return fromName, nil
	case fromURL != "":
		return fromURL, nil
	}
	return "", usageErrorf("--database-url or --dialect is required (or set ACCORD_DATABASE_URL)")
}

// noConnector is a database/sql connector that refuses to connect.
type noConnector struct{}

var errNoConnection = errors.New("accord migrate sql: no database connection")

func (noConnector) Connect(context.Context) (driver.Conn, error) { return nil, errNoConnection }
func (noConnector) Driver() driver.Driver                        { return noDriver{} }

type noDriver struct{}

func (noDriver) Open(string) (driver.Conn, error) { return nil, errNoConnection }
