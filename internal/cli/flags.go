package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envAnnotation is the flag annotation naming the environment variable a
// flag falls back to.
const envAnnotation = "accord_env"

// bindEnv makes flag name of cmd fall back to environment variable env, and
// says so in the flag's help.
func bindEnv(cmd *cobra.Command, name, env string) {
	f := cmd.Flags().Lookup(name)
	if f == nil {
		panic("cli: bindEnv: no flag --" + name)
	}
	f.Usage += " [$" + env + "]"
	if err := cmd.Flags().SetAnnotation(name, envAnnotation, []string{env}); err != nil {
		panic(err)
	}
}

// applyEnv sets every flag that was not given on the command line and has a
// non-empty environment variable to that variable's value.
func (a *app) applyEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		envs := f.Annotations[envAnnotation]
		if f.Changed || len(envs) == 0 {
			return
		}
		v, ok := a.lookupEnv(envs[0])
		if !ok || v == "" {
			return
		}
		if err := cmd.Flags().Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q (for --%s): %w", envs[0], v, f.Name, err))
		}
	})
	return errors.Join(errs...)
}

// dbFlags are the settings that locate Accord's tables.
type dbFlags struct {
	url, schema, tablePrefix string
}

const databaseURLHelp = "database URL: postgres://user:pass@host:5432/db, mysql://user:pass@host:3306/db or sqlite:///path/to/file.db"

func (f *dbFlags) register(cmd *cobra.Command, urlHelp string) {
	fs := cmd.Flags()
	fs.StringVar(&f.url, "database-url", "", urlHelp)
	bindEnv(cmd, "database-url", "ACCORD_DATABASE_URL")
	fs.StringVar(&f.schema, "schema", "", "PostgreSQL schema (MySQL: database) of Accord's tables; empty means the connection's default")
	bindEnv(cmd, "schema", "ACCORD_SCHEMA")
	fs.StringVar(&f.tablePrefix, "table-prefix", "accord_", "prefix of Accord's table names")
	bindEnv(cmd, "table-prefix", "ACCORD_TABLE_PREFIX")
}

// requireURL returns a usage error when no database URL was given.
func (f *dbFlags) requireURL() error {
	if f.url == "" {
		return usageErrorf("--database-url is required (or set ACCORD_DATABASE_URL): " +
			"postgres://user:pass@host:5432/db, mysql://user:pass@host:3306/db or sqlite:///path/to/file.db")
	}
	return nil
}

// logFlags configure the slog logger of long-running commands.
type logFlags struct {
	format, level string
}

func (f *logFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVar(&f.format, "log-format", "text", "log format on stderr: text or json")
	bindEnv(cmd, "log-format", "ACCORD_LOG_FORMAT")
	fs.StringVar(&f.level, "log-level", "info", "minimum log level: debug, info, warn or error")
	bindEnv(cmd, "log-level", "ACCORD_LOG_LEVEL")
}

// logger returns a logger writing to w, or a usage error.
func (f *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.level)); err != nil {
		return nil, usageErrorf("--log-level %q: want debug, info, warn or error", f.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(f.format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usageErrorf("--log-format %q: want text or json", f.format)
}
