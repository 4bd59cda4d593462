package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// The lab's etcd cluster (Options.EtcdMembers > 1): each member is a real
// etcd server process, the EtcdMemberCommand re-executed under `ip netns
// exec`, in a namespace of its own cabled to the hub bridge like a host,
// at the underlay's .2, .3, … (client port 2379, peer port 2380). Hosts
// are given every member's client URL. A member can be killed (SIGKILL:
// no goodbye to its peers or clients) and started again on its data, and
// partitioned: nftables rules in its own namespace drop its peer traffic
// both ways, so its clients still reach it while it has no leader — the
// case in which clients must move off it by themselves. The test process
// reaches each member through a relay listening on 127.0.0.1 in the root
// namespace whose sockets to the member are opened in the hub namespace.

const (
	memberClientPort = 2379
	memberPeerPort   = 2380
)

// EtcdMember is one member of the lab's etcd cluster.
type EtcdMember struct {
	Name string // m1, m2, …
	NS   string
	IP   netip.Addr
	// ClientURL is the member's client endpoint on the underlay, as hosts
	// reach it.
	ClientURL string
	// LocalURL reaches the member from the root namespace (a relay on
	// 127.0.0.1).
	LocalURL string
	LogFile  string

	dir, readyFile string
	relay          net.Listener
	mu             sync.Mutex
	proc           *exec.Cmd
	done           chan struct{}
}

// EtcdCluster is the lab's multi-member etcd cluster.
type EtcdCluster struct {
	Members []*EtcdMember
	command []string
	initial string // --initial-cluster
}

// Endpoints is every member's client URL, comma-separated, for
// --etcd-endpoints.
func (ec *EtcdCluster) Endpoints() string {
	var out []string
	for _, m := range ec.Members {
		out = append(out, m.ClientURL)
	}
	return strings.Join(out, ",")
}

// LocalURLs reach the members from the root namespace.
func (ec *EtcdCluster) LocalURLs() []string {
	var out []string
	for _, m := range ec.Members {
		out = append(out, m.LocalURL)
	}
	return out
}

// newEtcdCluster builds n member namespaces on the hub's bridge and
// starts the members; it returns once the cluster has a leader and every
// member serves.
func (c *Cluster) newEtcdCluster(ctx context.Context, n int) error {
	if len(c.opts.EtcdMemberCommand) == 0 {
		return errors.New("an etcd cluster needs Options.EtcdMemberCommand")
	}
	ec := &EtcdCluster{command: c.opts.EtcdMemberCommand}
	c.EtcdCluster = ec
	var initial []string
	for i := 0; i < n; i++ {
		m := &EtcdMember{
			Name:    fmt.Sprintf("m%d", i+1),
			NS:      fmt.Sprintf("%s-e%d", c.opts.Name, i+1),
			IP:      nthAddr(c.opts.Underlay, 2+i),
			LogFile: filepath.Join(c.opts.Dir, fmt.Sprintf("etcd-m%d.log", i+1)),
			dir:     filepath.Join(c.opts.Dir, fmt.Sprintf("etcd-m%d", i+1)),
		}
		m.readyFile = m.dir + ".ready"
		m.ClientURL = fmt.Sprintf("http://%s", net.JoinHostPort(m.IP.String(), fmt.Sprint(memberClientPort)))
		ec.Members = append(ec.Members, m)
		initial = append(initial, fmt.Sprintf("%s=http://%s", m.Name, net.JoinHostPort(m.IP.String(), fmt.Sprint(memberPeerPort))))
		veth := fmt.Sprintf("%s-e%d", c.opts.Name, i+1)
		for _, s := range c.cableSteps(m.NS, veth, m.IP) {
			if err := ip(ctx, s...); err != nil {
				return err
			}
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		m.relay, m.LocalURL = l, "http://"+l.Addr().String()
		go relay(l, c.Hub, strings.TrimPrefix(m.ClientURL, "http://"))
	}
	ec.initial = strings.Join(initial, ",")
	// A new cluster's members become ready together (each waits for a
	// leader), so all start before any is waited for.
	for _, m := range ec.Members {
		if err := ec.spawn(m); err != nil {
			return err
		}
	}
	for _, m := range ec.Members {
		if err := ec.waitReady(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// spawn starts m's process without waiting for it.
func (ec *EtcdCluster) spawn(m *EtcdMember) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		return fmt.Errorf("etcd member %s already running", m.Name)
	}
	_ = os.Remove(m.readyFile)
	logf, err := os.OpenFile(m.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := append([]string{"netns", "exec", m.NS}, ec.command...)
	args = append(args, "--name", m.Name, "--dir", m.dir, "--ip", m.IP.String(),
		"--initial-cluster", ec.initial, "--ready-file", m.readyFile)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	m.proc, m.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}(m.done)
	return nil
}

func (ec *EtcdCluster) waitReady(ctx context.Context, m *EtcdMember) error {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(m.readyFile); err == nil {
			return nil
		}
		select {
		case <-done:
			out, _ := os.ReadFile(m.LogFile)
			return fmt.Errorf("etcd member %s exited: %s", m.Name, tail(out, 2000))
		case <-ctx.Done():
			return fmt.Errorf("etcd member %s not ready: %w", m.Name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// Start starts a killed member again on its data and returns once it
// serves (it has rejoined and applied what it missed up to its start).
func (ec *EtcdCluster) Start(ctx context.Context, m *EtcdMember) error {
	if err := ec.spawn(m); err != nil {
		return err
	}
	return ec.waitReady(ctx, m)
}

// Kill sends SIGKILL to m and waits for it to be gone.
func (ec *EtcdCluster) Kill(m *EtcdMember) {
	m.mu.Lock()
	cmd, done := m.proc, m.done
	m.proc = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// partitionTable is the nftables table that cuts a member off.
const partitionTable = "lab-partition"

// Partition cuts m off from its peers: in its namespace, every packet to
// or from a peer port is dropped, both ways, on connections that exist and
// new ones. Its clients still reach it.
func (ec *EtcdCluster) Partition(ctx context.Context, m *EtcdMember) error {
	script := fmt.Sprintf(`table inet %[1]s {
	chain in { type filter hook input priority -10; tcp dport %[2]d drop; tcp sport %[2]d drop; }
	chain out { type filter hook output priority -10; tcp dport %[2]d drop; tcp sport %[2]d drop; }
}
`, partitionTable, memberPeerPort)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", m.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("partition %s: nft: %w: %s", m.Name, err, out)
	}
	return nil
}

// Heal undoes Partition.
func (ec *EtcdCluster) Heal(ctx context.Context, m *EtcdMember) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "exec", m.NS, "nft", "delete", "table", "inet", partitionTable).CombinedOutput(); err != nil {
		return fmt.Errorf("heal %s: nft: %w: %s", m.Name, err, out)
	}
	return nil
}

// Leader asks every running member for its status and returns the member
// that a majority of members names as leader.
func (ec *EtcdCluster) Leader(ctx context.Context) (*EtcdMember, error) {
	type answer struct {
		m   *EtcdMember
		st  *clientv3.StatusResponse
		err error
	}
	answers := make(chan answer, len(ec.Members))
	asked := 0
	for _, m := range ec.Members {
		if !m.Running() {
			continue
		}
		asked++
		go func() {
			st, err := m.Status(ctx)
			answers <- answer{m, st, err}
		}()
	}
	votes := map[uint64]int{}
	byID := map[uint64]*EtcdMember{}
	var errs []error
	for ; asked > 0; asked-- {
		a := <-answers
		if a.err != nil {
			errs = append(errs, a.err)
			continue
		}
		byID[a.st.Header.MemberId] = a.m
		if a.st.Leader != 0 {
			votes[a.st.Leader]++
		}
	}
	for id, n := range votes {
		if n > len(ec.Members)/2 && byID[id] != nil {
			return byID[id], nil
		}
	}
	return nil, fmt.Errorf("no leader named by a majority (%v): %w", votes, errors.Join(errs...))
}

// Running reports whether m's process runs (it was not killed).
func (m *EtcdMember) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc != nil
}

// Status is the member's own view (maintenance Status API): its ID, the
// leader it knows (0: none), its raft index and term.
func (m *EtcdMember) Status(ctx context.Context) (*clientv3.StatusResponse, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.LocalURL}, DialTimeout: 2 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, m.LocalURL)
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", m.Name, err)
	}
	return st, nil
}

// close kills the members and closes the relays.
func (ec *EtcdCluster) close() {
	for _, m := range ec.Members {
		ec.Kill(m)
		if m.relay != nil {
			m.relay.Close()
		}
	}
}

// MemberConfig is what ServeEtcdMember runs.
type MemberConfig struct {
	Name, Dir      string
	IP             netip.Addr
	InitialCluster string // name=peerURL,…
	// ReadyFile is created once the member serves.
	ReadyFile string
}

// ServeEtcdMember runs one member of the lab's etcd cluster (the body of
// EtcdMemberCommand, run inside the member's namespace) until ctx ends.
// Started again on a data directory that has one, it rejoins as the same
// member (etcd ignores the initial cluster then).
func ServeEtcdMember(ctx context.Context, mc MemberConfig) error {
	if err := os.MkdirAll(mc.Dir, 0o700); err != nil {
		return err
	}
	cu, _ := url.Parse(fmt.Sprintf("http://%s", net.JoinHostPort(mc.IP.String(), fmt.Sprint(memberClientPort))))
	pu, _ := url.Parse(fmt.Sprintf("http://%s", net.JoinHostPort(mc.IP.String(), fmt.Sprint(memberPeerPort))))
	cfg := embed.NewConfig()
	cfg.Dir = mc.Dir
	cfg.Name = mc.Name
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = mc.InitialCluster
	cfg.InitialClusterToken = "weft-lab"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{"stderr"}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcd member %s: %w", mc.Name, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", mc.Name, err)
	case <-ctx.Done():
		return nil
	}
	if err := os.WriteFile(mc.ReadyFile, nil, 0o644); err != nil {
		return err
	}
	select {
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", mc.Name, err)
	case <-ctx.Done():
		return nil
	}
}
