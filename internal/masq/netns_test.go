package masq

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The privileged tests run the real nft and iptables, always inside a
// fresh network namespace so that the machine's own rules are never
// touched. knftables and go-iptables exec their binaries from the current
// process, so rather than switching a thread's namespace (unsafe in Go) the
// test re-executes itself under `ip netns exec`: the parent creates the
// namespace (and any more topology), the child runs the test body inside
// it, and the parent reports the child's result.

// childEnv marks the child process; its value is the namespace's name.
const childEnv = "WEFT_MASQ_NETNS"

// inNetns returns true in the child, where the caller runs the test body.
// In the parent it creates a namespace, lets prepare (if any) build more
// topology around it and return extra NAME=value environment for the
// child, runs the child, and returns false.
func inNetns(t *testing.T, prepare func(t *testing.T, ns string) []string) bool {
	t.Helper()
	if os.Getenv(childEnv) != "" {
		return true
	}
	if os.Geteuid() != 0 {
		t.Fatal("privileged test: must run as root (it works inside its own network namespaces)")
	}
	ns := newNetns(t)
	env := []string{childEnv + "=" + ns}
	if prepare != nil {
		env = append(env, prepare(t, ns)...)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"netns", "exec", ns, exe, "-test.run=" + runPattern(t.Name()), "-test.v", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout="+time.Until(d).Round(time.Second).String())
	}
	cmd := exec.CommandContext(t.Context(), "ip", args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in namespace %s: %v\n%s", ns, err, out)
	}
	// A pattern that matched nothing would also exit 0.
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("the test did not run in namespace %s:\n%s", ns, out)
	}
	if testing.Verbose() {
		t.Logf("in namespace %s:\n%s", ns, out)
	}
	return false
}

// runPattern is a -test.run pattern for exactly this (sub)test.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// newNetns creates a uniquely named namespace, deleted when the test ends.
func newNetns(t *testing.T) string {
	t.Helper()
	name := "wt-masq-" + strings.ToLower(rand.Text()[:8])
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// run runs a command and returns its output, failing the test on error.
func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// nft runs an nft script in the current namespace.
func nft(t *testing.T, script string) string {
	t.Helper()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nft -f - <<%q: %v\n%s", script, err, out)
	}
	return string(out)
}
