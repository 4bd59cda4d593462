package extension

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

var underlay = backend.Underlay{
	Name: "eth0", MTU: 1460,
	LocalIP: netip.MustParseAddr("192.168.1.10"), PublicIP: netip.MustParseAddr("203.0.113.10"),
	LocalIPv6: netip.MustParseAddr("fd00::10"),
}

// script writes an executable shell script into dir and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// recorder collects what CommandRan was told, safely across goroutines.
type recorder struct {
	mu  sync.Mutex
	ran []string
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ran)
}

func newExt(t *testing.T, netconf string, ran *recorder) (*Backend, error) {
	t.Helper()
	n, err := config.ParseNetwork([]byte(netconf))
	if err != nil {
		t.Fatal(err)
	}
	env := backend.Env{Network: n, Underlay: underlay}
	if ran != nil {
		env.CommandRan = func(c string, _ time.Duration, err error) {
			r := "ok"
			if err != nil {
				r = "error"
			}
			ran.mu.Lock()
			ran.ran = append(ran.ran, c+":"+r)
			ran.mu.Unlock()
		}
	}
	b, err := Factory(env)
	if err != nil {
		return nil, err
	}
	return b.(*Backend), nil
}

func netconf(backendJSON string) string {
	return `{"Network":"10.5.0.0/16","Backend":` + backendJSON + `}`
}

func quote(s string) string { b, _ := json.Marshal(s); return string(b) }

func TestParseOptionsErrors(t *testing.T) {
	for raw, want := range map[string]string{
		`{"Type":"extension","SubnetAddCommand":7}`:      "Backend.SubnetAddCommand: wrong type: got JSON number, want a command line (string)",
		`{"Type":"extension","PreStartupCommand":["a"]}`: "Backend.PreStartupCommand: wrong type: got JSON array, want a command line (string)",
	} {
		_, err := ParseOptions(json.RawMessage(raw))
		if fe := (*config.FieldError)(nil); !errors.As(err, &fe) || err.Error() != want {
			t.Errorf("%s: %v\nwant %s", raw, err, want)
		}
	}
	o, err := ParseOptions(json.RawMessage(`{"Type":"extension","subnetaddcommand":"ip route"}`))
	if err != nil || o.SubnetAddCommand != "ip route" {
		t.Errorf("case-insensitive field: %+v, %v", o, err)
	}
}

// TestPreStartupGolden: PreStartupCommand's output (trimmed, stdout and
// stderr) is our BackendData as a JSON string, in upstream's lease JSON,
// with the interface's own address (not --public-ip's) as upstream's;
// without the command there is no data.
func TestPreStartupGolden(t *testing.T) {
	dir := t.TempDir()
	pre := script(t, dir, "pre", `echo "  0a:58:0a:f4:00:01"; echo warn >&2`+"\n")
	var rec recorder
	b, err := newExt(t, netconf(`{"Type":"extension","PreStartupCommand":`+quote(pre)+`}`), &rec)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(b.Attrs())
	const want = `{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"extension","BackendData":"0a:58:0a:f4:00:01\nwarn"}`
	if string(got) != want {
		t.Errorf("lease attrs %s\nwant        %s", got, want)
	}
	if ran := rec.get(); len(ran) != 1 || ran[0] != "PreStartupCommand:ok" {
		t.Errorf("metrics saw %v", rec.get())
	}
	l, err := lease.Decode("10.5.1.0-24", []byte(want))
	if err != nil || !l.Attrs.Equal(b.Resume(l)) {
		t.Errorf("upstream's lease %+v, %v; we publish %+v", l.Attrs, err, b.Attrs())
	}
	plain, err := newExt(t, netconf(`{"Type":"extension"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(plain.Attrs()); string(got) != `{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"extension"}` {
		t.Errorf("no PreStartupCommand: %s", got)
	}
	if plain.MTU() != 1460 || plain.Type() != "extension" {
		t.Errorf("MTU %d, Type %q", plain.MTU(), plain.Type())
	}
}

// TestPreStartupFails: a failing PreStartupCommand stops the backend from
// being made, with its output in the error.
func TestPreStartupFails(t *testing.T) {
	pre := script(t, t.TempDir(), "pre", "echo no vxlan module; exit 3\n")
	_, err := newExt(t, netconf(`{"Type":"extension","PreStartupCommand":`+quote(pre)+`}`), nil)
	if err == nil || !strings.Contains(err.Error(), "PreStartupCommand failed: exit status 3: no vxlan module") {
		t.Fatalf("err = %v", err)
	}
}

// TestCommandNoShell: a command line is split on white space and $VAR is
// expanded per word without a shell, so a value with spaces or shell
// syntax is one literal argument.
func TestCommandNoShell(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "args")
	args := script(t, dir, "args", `for a in "$@"; do printf '%s|' "$a"; done > `+out+"\n")
	c := command{name: "SubnetAddCommand", line: args + " x-$SUBNET ${PUBLIC_IP} $UNSET ; echo hi"}
	_, err := c.run(t.Context(), []string{"SUBNET=10.5.2.0/24 $(reboot)", "PUBLIC_IP=a;b"}, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out)
	if want := "x-10.5.2.0/24 $(reboot)|a;b||;|echo|hi|"; string(got) != want {
		t.Errorf("args %q\nwant %q", got, want)
	}
}

func TestCommandTimeout(t *testing.T) {
	c := command{name: "SubnetAddCommand", line: script(t, t.TempDir(), "slow", "sleep 30\n")}
	start := time.Now()
	_, err := c.run(t.Context(), nil, "", 100*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "timed out after 100ms") {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s", d)
	}
}

func TestPeerChecks(t *testing.T) {
	b, err := newExt(t, netconf(`{"Type":"extension"}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: b.Attrs()}
	p := lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: lease.Attrs{
		PublicIP: netip.MustParseAddr("192.168.1.11"), BackendType: "extension", BackendData: json.RawMessage(`"aa"`)}}
	if o, err := b.Peer(self, p); err != nil || o.Len() != 0 {
		t.Errorf("good peer: %d objects, %v", o.Len(), err)
	}
	bad := p
	bad.Attrs.BackendData = json.RawMessage(`{"VtepMAC":"x"}`)
	if _, err := b.Peer(self, bad); backend.SkipReason(err) != backend.ReasonBackendData {
		t.Errorf("object data: %v", err)
	}
	vx := p
	vx.Attrs.BackendType = "vxlan"
	if _, err := b.Peer(self, vx); backend.SkipReason(err) != backend.ReasonBackendType {
		t.Errorf("vxlan peer: %v", err)
	}
}
