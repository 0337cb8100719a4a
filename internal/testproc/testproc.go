// Package testproc runs the test binary itself as a child process (a relay,
// a consumer) so that crash tests can kill it with SIGKILL or stop it with
// SIGTERM. The child finds its configuration, JSON-encoded, in an
// environment variable that the package's TestMain checks.
package testproc

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Child is a running child process.
type Child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // cmd.Wait's result, set when done is closed
}

// Start runs the test binary with env=<spec as JSON>. Its output goes to a
// log file that is shown when the test fails; it is killed at the end of the
// test if still running. name is used in messages ("relay process 123").
func Start(t *testing.T, name, env string, spec any) *Child {
	t.Helper()
	js, err := json.Marshal(spec)
	require.NoError(t, err)
	exe, err := os.Executable()
	require.NoError(t, err)
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	require.NoError(t, err)
	defer logFile.Close()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), env+"="+string(js))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	require.NoError(t, cmd.Start())
	c := &Child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			if len(out) > 8000 {
				out = append([]byte("...\n"), out[len(out)-8000:]...)
			}
			t.Logf("%s process %d (%v):\n%s", name, cmd.Process.Pid, c.err, out)
		}
	})
	return c
}

// Wait waits at most timeout for the process to exit and returns cmd.Wait's
// error.
func (c *Child) Wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(timeout):
		t.Fatalf("%s process %d still running after %s", c.name, c.cmd.Process.Pid, timeout)
		return nil
	}
}

// requireRunning fails the test if the process exited already.
func (c *Child) requireRunning(t *testing.T, what string) {
	t.Helper()
	select {
	case <-c.done:
		t.Fatalf("%s process %d exited before %s: %v", c.name, c.cmd.Process.Pid, what, c.err)
	default:
	}
}

// Kill sends SIGKILL and requires the process to die of it within 10 s.
func (c *Child) Kill(t *testing.T) {
	t.Helper()
	c.requireRunning(t, "it was killed")
	require.NoError(t, c.cmd.Process.Kill())
	err := c.Wait(t, 10*time.Second)
	var exitErr *exec.ExitError
	require.ErrorAs(t, err, &exitErr, "%s process exited on its own", c.name)
	ws := exitErr.Sys().(syscall.WaitStatus)
	require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGKILL, "%s process: %v", c.name, err)
}

// Terminate sends SIGTERM and waits at most timeout for the exit; it returns
// how long the exit took and cmd.Wait's error.
func (c *Child) Terminate(t *testing.T, timeout time.Duration) (time.Duration, error) {
	t.Helper()
	c.requireRunning(t, "SIGTERM")
	start := time.Now()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	err := c.Wait(t, timeout)
	return time.Since(start), err
}

// Pid returns the process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Pause sends SIGSTOP and waits (at most 10 s) until the kernel reports the
// process stopped, so that nothing it does can be timed after the returned
// instant.
func (c *Child) Pause(t *testing.T) time.Time {
	t.Helper()
	c.requireRunning(t, "SIGSTOP")
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGSTOP))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if state(t, c.cmd.Process.Pid) == 'T' {
			return time.Now()
		}
		require.True(t, time.Now().Before(deadline), "%s process %d not stopped 10 s after SIGSTOP", c.name, c.cmd.Process.Pid)
		time.Sleep(time.Millisecond)
	}
}

// Resume sends SIGCONT and returns the instant before it was sent.
func (c *Child) Resume(t *testing.T) time.Time {
	t.Helper()
	c.requireRunning(t, "SIGCONT")
	at := time.Now()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGCONT))
	return at
}

// state returns the process state letter of /proc/<pid>/stat.
func state(t *testing.T, pid int) byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	require.NoError(t, err)
	// pid (comm) S ...: comm may contain spaces, so look after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	require.True(t, i >= 0 && i+2 < len(b), "unexpected /proc/%d/stat: %q", pid, b)
	return b[i+2]
}
