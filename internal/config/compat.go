package config

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
)

// Ignored is a setting upstream flanneld takes that has no effect in weft.
// It is accepted so that unit files and manifests written for upstream
// keep working; the daemon logs it with the reason.
type Ignored struct {
	Name   string // "--vmodule", or an environment variable such as "EVENT_QUEUE_DEPTH"
	Value  string
	Reason string
	// Err is set when the value is malformed where upstream does not
	// stop for it either (an environment variable its kube subnet
	// manager reads); weft goes on and the daemon warns.
	Err error
}

// Upstream exposes three of klog's flags on its own flag set: -v (ours sets
// the slog level), -vmodule and -log_backtrace_at. klog's other flags
// (--logtostderr, --log_dir, …) are registered on Go's global flag set,
// which upstream never parses; unit files and older manifests written for
// klog-era daemons still pass them, so weft accepts them too (typed as in
// klog v2, so a malformed value is still an error naming the flag) and
// logs that they are ignored.
// Env: FLANNELD_VMODULE, FLANNELD_LOGTOSTDERR, …, as for every flag.
const (
	vmoduleReason   = "weft logs with log/slog; -v sets the level for the whole daemon, there is no per-file verbosity"
	backtraceReason = "weft logs with log/slog, which has no per-call-site stack traces"
)

// vmoduleValue accepts klog's -vmodule syntax: a comma-separated list of
// pattern=N with N a non-negative 32-bit integer; empty items are allowed.
type vmoduleValue struct{ v *string }

func (m vmoduleValue) String() string {
	if m.v == nil {
		return ""
	}
	return *m.v
}

func (m vmoduleValue) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		if item == "" {
			continue
		}
		pattern, level, ok := strings.Cut(item, "=")
		if !ok || pattern == "" || strings.Contains(level, "=") {
			return fmt.Errorf("%q is not pattern=N", item)
		}
		n, err := strconv.ParseInt(level, 10, 32)
		if err != nil || n < 0 {
			return fmt.Errorf("%q: level must be a non-negative whole number", item)
		}
	}
	*m.v = s
	return nil
}

// backtraceValue accepts klog's -log_backtrace_at syntax: empty, or
// file:N with a dot in file and N > 0.
type backtraceValue struct{ v *string }

func (b backtraceValue) String() string {
	if b.v == nil {
		return ""
	}
	return *b.v
}

func (b backtraceValue) Set(s string) error {
	if s != "" {
		file, line, ok := strings.Cut(s, ":")
		n, err := strconv.Atoi(line)
		if !ok || strings.Contains(line, ":") || !strings.Contains(file, ".") || err != nil || n <= 0 {
			return fmt.Errorf("%q is not file.go:N", s)
		}
	}
	*b.v = s
	return nil
}

// klogOther are klog v2's flags beyond -v, -vmodule and -log_backtrace_at,
// with their value kinds.
var klogOther = []struct{ name, kind string }{
	{"logtostderr", "bool"}, {"alsologtostderr", "bool"}, {"add_dir_header", "bool"},
	{"skip_headers", "bool"}, {"skip_log_headers", "bool"}, {"one_output", "bool"},
	{"legacy_stderr_threshold_behavior", "bool"},
	{"log_dir", "string"}, {"log_file", "string"},
	{"log_file_max_size", "uint"},
	{"stderrthreshold", "severity"}, {"alsologtostderrthreshold", "severity"},
}

const klogReason = "weft logs to stderr with log/slog; klog's output settings do not apply"

// klogValue holds one of klog's output flags, checked as klog would.
type klogValue struct {
	kind string
	v    *string
}

func (k klogValue) String() string {
	if k.v == nil {
		return ""
	}
	return *k.v
}

func (k klogValue) IsBoolFlag() bool { return k.kind == "bool" }

func (k klogValue) Set(s string) error {
	var err error
	switch k.kind {
	case "bool":
		_, err = strconv.ParseBool(s)
	case "uint":
		_, err = strconv.ParseUint(s, 10, 64)
	case "severity":
		// klog takes a severity name or its number.
		switch strings.ToUpper(s) {
		case "INFO", "WARNING", "ERROR", "FATAL", "0", "1", "2", "3":
		default:
			err = fmt.Errorf("%q is not a klog severity (INFO, WARNING, ERROR, FATAL or 0-3)", s)
		}
	}
	if err != nil {
		return err
	}
	*k.v = s
	return nil
}

// klogFlags registers upstream's klog flags that weft accepts and ignores,
// and returns a function that, after parsing, lists those that were set.
func klogFlags(fs *flag.FlagSet) func(set func(name string) bool) []Ignored {
	var vmodule, backtrace string
	fs.Var(vmoduleValue{&vmodule}, "vmodule", "accepted for compatibility with upstream's klog flag; ignored")
	fs.Var(backtraceValue{&backtrace}, "log_backtrace_at", "accepted for compatibility with upstream's klog flag; ignored")
	other := make([]string, len(klogOther))
	for i, f := range klogOther {
		fs.Var(klogValue{f.kind, &other[i]}, f.name, "accepted for compatibility with klog; ignored")
	}
	return func(set func(string) bool) []Ignored {
		var out []Ignored
		if set("vmodule") {
			out = append(out, Ignored{Name: "--vmodule", Value: vmodule, Reason: vmoduleReason})
		}
		if set("log_backtrace_at") {
			out = append(out, Ignored{Name: "--log_backtrace_at", Value: backtrace, Reason: backtraceReason})
		}
		for i, f := range klogOther {
			if set(f.name) {
				out = append(out, Ignored{Name: "--" + f.name, Value: other[i], Reason: klogReason})
			}
		}
		return out
	}
}

// kubeEnv notes the environment variables upstream's kube subnet manager
// reads. Neither has a counterpart in weft, and a bad value does not stop
// the daemon (upstream refuses a non-integer EVENT_QUEUE_DEPTH at start).
func kubeEnv(getenv func(string) string) []Ignored {
	var out []Ignored
	if v := getenv("EVENT_QUEUE_DEPTH"); v != "" {
		ig := Ignored{Name: "EVENT_QUEUE_DEPTH", Value: v,
			Reason: "upstream sizes its node event buffer with it; weft has no such buffer: node changes are read from the watch in batches and never dropped or queued behind a full buffer"}
		if _, err := strconv.Atoi(v); err != nil {
			ig.Err = errors.New("not a whole number")
		}
		out = append(out, ig)
	}
	if v := getenv("CONT_WHEN_CACHE_NOT_READY"); v != "" {
		ig := Ignored{Name: "CONT_WHEN_CACHE_NOT_READY", Value: v,
			Reason: "upstream stops when its node cache is not synced within a timeout unless this is true; weft has no such timeout: it retries listing nodes until it succeeds"}
		if _, err := strconv.ParseBool(v); err != nil {
			ig.Err = errors.New("not true or false")
		}
		out = append(out, ig)
	}
	return out
}
