package cli

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/accordgo/accord"
	"github.com/accordgo/accord/outbox"
)

func (a *app) newOutboxCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "outbox", Short: "Inspect and manage the outbox"}
	dead := &cobra.Command{Use: "dead", Short: "List, requeue or drop the relay's dead letters",
		Long: `Rows the relay gave up on after --dead-letter-after failed publish attempts
(relay.Config.DeadLetterAfter) wait in the dead-letter table with their last
error. While a parked dead letter waits, the later rows of its key are held
back. Requeue puts a dead letter back into the outbox with its original
sequence number, so it is published before the held rows; drop deletes it for
good and lets the held rows go.`}
	dead.AddCommand(a.newDeadListCmd(), a.newDeadActionCmd("requeue"), a.newDeadActionCmd("drop"))
	cmd.AddCommand(dead)
	return cmd
}

func openOutbox(f *dbFlags) (*outbox.Outbox, *sql.DB, error) {
	if err := f.requireURL(); err != nil {
		return nil, nil, err
	}
	db, dialect, err := accord.OpenDB(f.url)
	if err != nil {
		return nil, nil, usageErrorf("--database-url: %w", err)
	}
	ob, err := outbox.New(&outbox.Config{Dialect: dialect, Schema: f.schema, TablePrefix: f.tablePrefix})
	if err != nil {
		_ = db.Close()
		return nil, nil, usageError(err)
	}
	return ob, db, nil
}

func (a *app) newDeadListCmd() *cobra.Command {
	var db dbFlags
	var after int64
	var limit int
	var asJSON bool
	cmd := &cobra.Command{Use: "list", Short: "List dead letters, oldest first", Args: cobra.NoArgs, Long: settingsHelp}
	db.register(cmd, databaseURLHelp+" (required)")
	cmd.Flags().Int64Var(&after, "after", 0, "list dead letters with a sequence number above this one")
	cmd.Flags().IntVar(&limit, "limit", 100, "most dead letters to list")
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per line")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ob, sqlDB, err := openOutbox(&db)
		if err != nil {
			return err
		}
		defer sqlDB.Close()
		dead, err := ob.DeadLetters(cmd.Context(), sqlDB, &outbox.DeadLetterListParams{After: after, Limit: limit})
		if err != nil {
			return err
		}
		if asJSON {
			enc := json.NewEncoder(a.stdout)
			for _, d := range dead {
				if err := enc.Encode(d); err != nil {
					return err
				}
			}
			return nil
		}
		w := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "SEQ\tID\tTOPIC\tKEY\tATTEMPTS\tPARKED\tDEAD AT\tLAST ERROR")
		for _, d := range dead {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%v\t%s\t%s\n", d.Seq, d.ID, d.Topic, d.Key, d.Attempts, d.Parked,
				d.DeadAt.UTC().Format(time.RFC3339), d.LastError)
		}
		return w.Flush()
	}
	return cmd
}

func (a *app) newDeadActionCmd(action string) *cobra.Command {
	var db dbFlags
	short := "Put dead letters back into the outbox, to be published again"
	if action == "drop" {
		short = "Delete dead letters for good"
	}
	cmd := &cobra.Command{Use: action + " SEQ...", Short: short, Args: cobra.MinimumNArgs(1), Long: settingsHelp}
	db.register(cmd, databaseURLHelp+" (required)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		seqs := make([]int64, len(args))
		for i, s := range args {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n <= 0 {
				return usageErrorf("%q is not a dead letter sequence number", s)
			}
			seqs[i] = n
		}
		ob, sqlDB, err := openOutbox(&db)
		if err != nil {
			return err
		}
		defer sqlDB.Close()
		for _, seq := range seqs {
			if action == "drop" {
				err = ob.DropDeadLetter(cmd.Context(), sqlDB, seq)
			} else {
				err = ob.RequeueDeadLetter(cmd.Context(), sqlDB, seq)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %d\n", action, seq)
		}
		return nil
	}
	return cmd
}
