package extension

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// CommandTimeout bounds every command: one that hangs would otherwise
// stall every peer after it (they run one at a time, as upstream's do).
const CommandTimeout = 2 * time.Minute

// maxOutput bounds how much of a command's output is kept and logged.
const maxOutput = 16 << 10

// command is one configured command line. As upstream's (since v0.28.2)
// it runs without a shell: the line is split on white space, and $VAR or
// ${VAR} in each word is replaced from the environment the command gets,
// so a value with spaces or shell metacharacters stays one argument and
// is never interpreted.
type command struct {
	// name is the field it came from, for logs, errors and metrics.
	name string
	line string
}

func (c command) set() bool { return strings.TrimSpace(c.line) != "" }

// result is what one run of a command did.
type result struct {
	output string // stdout and stderr together, trimmed, bounded
	took   time.Duration
}

// run runs c with env added to flanneld's environment and stdin as its
// standard input followed by a newline (as upstream), for at most timeout.
func (c command) run(ctx context.Context, env []string, stdin string, timeout time.Duration) (result, error) {
	start := time.Now()
	words := strings.Fields(c.line)
	if len(words) == 0 {
		return result{}, fmt.Errorf("%s is empty", c.name)
	}
	full := append(os.Environ(), env...)
	lookup := envMap(full)
	for i, w := range words {
		words[i] = os.Expand(w, func(k string) string { return lookup[k] })
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, words[0], words[1:]...)
	cmd.Env = full
	cmd.Stdin = strings.NewReader(stdin + "\n")
	var out boundedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A command that leaves children holding its output open must not
	// keep us waiting past its own end.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	r := result{output: strings.TrimSpace(out.String()), took: time.Since(start)}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return r, err
}

// envMap turns KEY=value lines into a map; a later line wins, as exec does.
func envMap(env []string) map[string]string {
	m := make(map[string]string, len(env))
	for _, e := range env {
		if k, v, ok := strings.Cut(e, "="); ok {
			m[k] = v
		}
	}
	return m
}

// boundedBuffer keeps the first maxOutput bytes written to it.
type boundedBuffer struct {
	b       bytes.Buffer
	dropped int
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	room := maxOutput - w.b.Len()
	if room >= len(p) {
		return w.b.Write(p)
	}
	if room > 0 {
		w.b.Write(p[:room])
	}
	w.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (w *boundedBuffer) String() string {
	if w.dropped > 0 {
		return fmt.Sprintf("%s… (%d more bytes)", w.b.String(), w.dropped)
	}
	return w.b.String()
}
