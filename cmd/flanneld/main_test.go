package main

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/config"
)

func noEnv(string) string { return "" }

// -h and --help print usage and exit 0, as upstream's flanneld does, so a
// wrapper script probing the binary does not see a failure.
func TestHelpExitsZero(t *testing.T) {
	for _, arg := range []string{"-h", "--help", "-help"} {
		var stdout, stderr bytes.Buffer
		if code := flanneld([]string{arg}, noEnv, &stdout, &stderr); code != 0 {
			t.Errorf("flanneld %s: exit %d, want 0; stderr:\n%s", arg, code, stderr.String())
		}
		if !strings.HasPrefix(stderr.String(), "Usage: flanneld [OPTION]...\n") || !strings.Contains(stderr.String(), "-iface-regex") {
			t.Errorf("flanneld %s: usage missing from stderr:\n%s", arg, stderr.String())
		}
	}
}

func TestBadConfigIsOneLineAndExitsNonZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := flanneld([]string{"--subnet-lease-renew-margin=0"}, noEnv, &stdout, &stderr)
	if code == 0 {
		t.Fatalf("exit 0 for a bad margin")
	}
	want := "flanneld: flags: --subnet-lease-renew-margin: 0 minutes is outside 1..1439\n"
	if stderr.String() != want {
		t.Errorf("stderr = %q, want %q", stderr.String(), want)
	}
}

func TestUnknownFlagExitsNonZero(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := flanneld([]string{"--no-such-flag"}, noEnv, &stdout, &stderr); code == 0 {
		t.Errorf("exit 0 for an unknown flag; stderr:\n%s", stderr.String())
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := flanneld([]string{"--version"}, noEnv, &stdout, &stderr); code != 0 || stdout.String() != version+"\n" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
}

func TestLogIgnored(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
	logIgnored(log, []config.Ignored{
		{Name: "--vmodule", Value: "main=2", Reason: "no per-file verbosity"},
		{Name: "EVENT_QUEUE_DEPTH", Value: "lots", Reason: "no buffer", Err: errors.New("not a whole number")},
	})
	want := `level=DEBUG msg="setting ignored" name=--vmodule value="main=2" reason="no per-file verbosity"
level=WARN msg="setting ignored, and its value is malformed" name=EVENT_QUEUE_DEPTH value=lots err="not a whole number" reason="no buffer"
`
	if buf.String() != want {
		t.Errorf("log:\n%s\nwant:\n%s", buf.String(), want)
	}
}

// WEFT_TEST_LEASE_TTL is read as a duration of at least 2 s; anything else
// stops flanneld with a one-line error naming the variable.
func TestTestHooks(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "WEFT_TEST_LEASE_TTL" {
				return v
			}
			return ""
		}
	}
	if h, err := testHooks(env("")); err != nil || h.LeaseTTL != 0 {
		t.Errorf("unset: %+v, %v", h, err)
	}
	if h, err := testHooks(env("20s")); err != nil || h.LeaseTTL != 20e9 {
		t.Errorf("20s: %+v, %v", h, err)
	}
	for _, bad := range []string{"1s", "soon", "-5s"} {
		if _, err := testHooks(env(bad)); err == nil || !strings.Contains(err.Error(), "WEFT_TEST_LEASE_TTL") {
			t.Errorf("%q: err = %v, want one naming WEFT_TEST_LEASE_TTL", bad, err)
		}
	}
}
