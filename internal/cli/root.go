// Package cli implements the accord command (cmd/accord) with cobra. Each
// command reads its settings from flags first, then ACCORD_* environment
// variables, then defaults, and says so in its help.
//
// Exit codes: 0 on success (and after a graceful stop of the relay), 1 when
// the command failed at run time, 2 for invalid flags, arguments or
// configuration.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes of Main.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// settingsHelp ends the long help of every command that has settings.
const settingsHelp = `Settings: a flag wins over its environment variable (named in brackets after
the flag), which wins over the default.`

// Main runs the accord command with args and returns the process exit code.
// SIGINT and SIGTERM cancel the command's context: the relay then stops
// gracefully. A second signal terminates the process at once.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore the default behaviour for a second signal
	}()
	return run(ctx, args, stdout, stderr)
}

// run is Main with the context that stops long-running commands.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return (&app{stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv}).run(ctx, args)
}

// app holds what commands print to and read settings from.
type app struct {
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
}

func (a *app) run(ctx context.Context, args []string) int {
	root := &cobra.Command{
		Use:   "accord",
		Short: "Accord keeps data consistent across microservices: outbox relay, migrations, benchmarks",
		Long: `Accord keeps data consistent across microservices: write events in your
database transaction (the transactional outbox), and let the relay publish them
to your broker.

Exit codes: 0 on success, 1 when a command fails, 2 for invalid flags or
configuration.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	root.AddCommand(newBenchCmd())
	root.AddCommand(a.newRelayCmd(), a.newMigrateCmd(), a.newOutboxCmd(), a.newSyncCmd(), a.newVersionCmd())
	a.wrapRunE(root)

	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	// Every RunE error is classified (see wrapRunE): the others come from
	// cobra itself (unknown commands, flags or arguments) and are usage
	// errors.
	code := exitUsage
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	fmt.Fprintf(a.stderr, "Error: %v\n", err)
	if code == exitUsage && cmd != nil {
		fmt.Fprintf(a.stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return code
}

// exitError carries the exit code of a command's error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks err as a problem with flags, arguments or configuration
// (exit code 2).
func usageError(err error) error { return &exitError{code: exitUsage, err: err} }

func usageErrorf(format string, args ...any) error { return usageError(fmt.Errorf(format, args...)) }

// wrapRunE wraps the RunE of cmd and of every command below it: the wrapper
// first applies environment variables to the flags that were not set (see
// bindEnv), then runs RunE and marks an error that is not already a usage
// error as a failure (exit code 1).
func (a *app) wrapRunE(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		a.wrapRunE(c)
	}
	fn := cmd.RunE
	if fn == nil {
		return
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := a.applyEnv(cmd); err != nil {
			return usageError(err)
		}
		err := fn(cmd, args)
		if err == nil {
			return nil
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		return &exitError{code: exitFailure, err: err}
	}
}

// groupRunE is the run function of a command that only groups others: it
// prints help, or fails on an unknown subcommand.
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmd.Help()
}
