package extension

import (
	"context"
	"encoding/json"
	"iter"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// journal is a directory of scripts that append what they were run with
// to one file: "<what> SUBNET PUBLIC_IP IPV6SUBNET stdin".
type journal struct {
	t    *testing.T
	dir  string
	file string
}

func newJournal(t *testing.T) *journal {
	dir := t.TempDir()
	return &journal{t: t, dir: dir, file: filepath.Join(dir, "journal")}
}

// cmd returns a script logging what; it fails while the file fail-<what>
// exists.
func (j *journal) cmd(what string) string {
	return script(j.t, j.dir, what, `read -r in
if [ -e `+j.dir+`/fail-`+what+` ]; then echo "refused $SUBNET"; exit 1; fi
echo "`+what+` $SUBNET $PUBLIC_IP $IPV6SUBNET $NETWORK [$in]" >> `+j.file+"\n")
}

func (j *journal) failing(what string, on bool) {
	p := filepath.Join(j.dir, "fail-"+what)
	if on {
		os.WriteFile(p, nil, 0o644)
	} else {
		os.Remove(p)
	}
}

func (j *journal) lines() []string {
	b, _ := os.ReadFile(j.file)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// wait waits until the journal holds want, in order.
func (j *journal) wait(want ...string) {
	j.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := j.lines()
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			j.t.Fatalf("journal:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func peer(subnet, ip, data string) lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "extension"}}
	if data != "" {
		l.Attrs.BackendData, _ = json.Marshal(data)
	}
	return l
}

func set(ls ...lease.Lease) iter.Seq[lease.Lease] { return slices.Values(ls) }

// TestRunnerFollowsPeers: PostStartupCommand runs first with our lease and
// the network; then the add command per new peer with its data on stdin,
// the remove command per gone peer, remove-then-add for a changed one,
// nothing for an unchanged one.
func TestRunnerFollowsPeers(t *testing.T) {
	j := newJournal(t)
	var rec recorder
	b, err := newExt(t, netconf(`{"Type":"extension","PostStartupCommand":`+quote(j.cmd("post"))+
		`,"SubnetAddCommand":`+quote(j.cmd("add")+" ignored-arg")+`,"SubnetRemoveCommand":`+quote(j.cmd("remove"))+`}`), &rec)
	if err != nil {
		t.Fatal(err)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: b.Attrs()}
	ctx, cancel := context.WithCancel(t.Context())
	peers := make(chan iter.Seq[lease.Lease], 1)
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, self, peers) }()
	t.Cleanup(func() { cancel(); <-done })

	a, c := peer("10.5.2.0/24", "192.168.1.11", "mac-a"), peer("10.5.3.0/24", "192.168.1.12", "")
	peers <- set(a, c)
	j.wait("post 10.5.1.0/24 192.168.1.10  10.5.0.0/16 []",
		"add 10.5.2.0/24 192.168.1.11   [mac-a]",
		"add 10.5.3.0/24 192.168.1.12   []")
	a2 := peer("10.5.2.0/24", "192.168.1.21", "mac-a2")
	peers <- set(a2, c)
	j.wait("post 10.5.1.0/24 192.168.1.10  10.5.0.0/16 []",
		"add 10.5.2.0/24 192.168.1.11   [mac-a]",
		"add 10.5.3.0/24 192.168.1.12   []",
		"remove 10.5.2.0/24 192.168.1.11   [mac-a]",
		"add 10.5.2.0/24 192.168.1.21   [mac-a2]")
	peers <- set(a2)
	j.wait("post 10.5.1.0/24 192.168.1.10  10.5.0.0/16 []",
		"add 10.5.2.0/24 192.168.1.11   [mac-a]",
		"add 10.5.3.0/24 192.168.1.12   []",
		"remove 10.5.2.0/24 192.168.1.11   [mac-a]",
		"add 10.5.2.0/24 192.168.1.21   [mac-a2]",
		"remove 10.5.3.0/24 192.168.1.12   []")
	peers <- set(a2) // unchanged: nothing runs
	time.Sleep(100 * time.Millisecond)
	if n := len(j.lines()); n != 6 {
		t.Errorf("an unchanged set ran commands: %v", j.lines())
	}
	if ran, want := rec.get(), []string{"PostStartupCommand:ok", "SubnetAddCommand:ok", "SubnetAddCommand:ok", "SubnetRemoveCommand:ok",
		"SubnetAddCommand:ok", "SubnetRemoveCommand:ok"}; !slices.Equal(ran, want) {
		t.Errorf("metrics saw %v", ran)
	}
}

// TestRunnerRetries: a failed PostStartupCommand is retried (peers wait);
// a failed add is retried with backoff until it succeeds; a peer whose
// remove fails is retried, and a later add of it waits for the remove.
func TestRunnerRetries(t *testing.T) {
	j := newJournal(t)
	var rec recorder
	b, err := newExt(t, netconf(`{"Type":"extension","PostStartupCommand":`+quote(j.cmd("post"))+
		`,"SubnetAddCommand":`+quote(j.cmd("add"))+`,"SubnetRemoveCommand":`+quote(j.cmd("remove"))+`}`), &rec)
	if err != nil {
		t.Fatal(err)
	}
	b.retryMin, b.retryMax = 20*time.Millisecond, 80*time.Millisecond
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: b.Attrs()}
	ctx, cancel := context.WithCancel(t.Context())
	peers := make(chan iter.Seq[lease.Lease], 1)
	done := make(chan error, 1)
	j.failing("post", true)
	j.failing("add", true)
	go func() { done <- b.Serve(ctx, self, peers) }()
	t.Cleanup(func() { cancel(); <-done })

	a := peer("10.5.2.0/24", "192.168.1.11", "")
	peers <- set(a)
	time.Sleep(150 * time.Millisecond)
	if got := j.lines(); len(got) != 1 || got[0] != "" {
		t.Fatalf("commands ran before PostStartupCommand succeeded: %v", got)
	}
	j.failing("post", false)
	j.wait("post 10.5.1.0/24 192.168.1.10  10.5.0.0/16 []")
	time.Sleep(200 * time.Millisecond) // several failed adds
	j.failing("add", false)
	j.wait("post 10.5.1.0/24 192.168.1.10  10.5.0.0/16 []",
		"add 10.5.2.0/24 192.168.1.11   []")
	fails, ran := 0, rec.get()
	for _, r := range ran {
		if r == "SubnetAddCommand:error" {
			fails++
		}
	}
	if fails < 2 || !slices.Contains(ran, "PostStartupCommand:error") {
		t.Errorf("metrics saw %v; want PostStartupCommand errors and ≥ 2 failed adds", ran)
	}

	j.failing("remove", true)
	peers <- set()
	time.Sleep(150 * time.Millisecond)
	peers <- set(a) // back, unchanged: it was never removed, nothing to run
	time.Sleep(100 * time.Millisecond)
	peers <- set()
	time.Sleep(100 * time.Millisecond)
	j.failing("remove", false)
	j.wait("post 10.5.1.0/24 192.168.1.10  10.5.0.0/16 []",
		"add 10.5.2.0/24 192.168.1.11   []",
		"remove 10.5.2.0/24 192.168.1.11   []")
}
