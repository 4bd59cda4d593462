package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/nsrun"
	"github.com/weft-net/weft/internal/tools/lab"
)

// The helpers here measure what a daemon swap does to traffic: pingers at
// 100/s, a long-lived TCP stream, netlink deletions seen on the swapped
// host, and the lease and device before and after.

// pinger is `ping -i 0.01 -c n` running in a namespace.
type pinger struct {
	what string
	cmd  *exec.Cmd
	out  strings.Builder
}

// startPing pings dst from namespace ns n times at 100/s (src optional).
func startPing(t *testing.T, what, ns string, src netip.Addr, dst netip.Addr, n int) *pinger {
	t.Helper()
	args := []string{"netns", "exec", ns, "ping", "-q", "-i", "0.01", "-W", "1", "-c", strconv.Itoa(n)}
	if src.IsValid() {
		args = append(args, "-I", src.String())
	}
	p := &pinger{what: what, cmd: exec.Command("ip", append(args, dst.String())...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return p
}

// wait returns packets sent and lost.
func (p *pinger) wait(t *testing.T) (sent, lost int) {
	t.Helper()
	_ = p.cmd.Wait() // non-zero exit when packets were lost; counted below
	m := pingStats.FindStringSubmatch(p.out.String())
	if m == nil {
		t.Fatalf("%s: no ping statistics in %q", p.what, p.out.String())
	}
	sent, _ = strconv.Atoi(m[1])
	recv, _ := strconv.Atoi(m[2])
	return sent, sent - recv
}

// tcpStream is one TCP connection from a client pod to a server pod on
// which the client writes a numbered 16-byte record every 10 ms; the
// server checks the sequence and records the longest gap between two
// records arriving. A stall shows as a gap, a reset as an error.
type tcpStream struct {
	conn, srv net.Conn
	ln        net.Listener
	stop      chan struct{}
	wg        sync.WaitGroup

	mu      sync.Mutex
	err     error
	records int
	maxGap  time.Duration
	last    time.Time
}

func inNS(t *testing.T, ns string, f func() error) {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("netns %s: %v", ns, err)
	}
	defer h.Close()
	if err := nsrun.Do(h, f); err != nil {
		t.Fatalf("in %s: %v", ns, err)
	}
}

// startStream connects client to server (port 5001 on server's addr).
func startStream(t *testing.T, client, server *lab.Pod, dst netip.Addr) *tcpStream {
	t.Helper()
	s := &tcpStream{stop: make(chan struct{})}
	addr := netip.AddrPortFrom(dst, 5001).String()
	inNS(t, server.NS, func() (err error) {
		s.ln, err = net.Listen("tcp", addr)
		return err
	})
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := s.ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	inNS(t, client.NS, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		s.conn, err = d.Dial("tcp", addr)
		return err
	})
	var ok bool
	select {
	case s.srv, ok = <-accepted:
	case <-time.After(5 * time.Second):
	}
	if !ok || s.srv == nil {
		t.Fatalf("stream %s: no connection accepted", addr)
	}
	s.last = time.Now()
	s.wg.Add(2)
	go s.write()
	go s.read()
	t.Cleanup(func() { s.finish() })
	return s
}

func (s *tcpStream) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *tcpStream) write() {
	defer s.wg.Done()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var rec [16]byte
	for seq := uint64(0); ; seq++ {
		select {
		case <-s.stop:
			_ = s.conn.(*net.TCPConn).CloseWrite()
			return
		case <-tick.C:
		}
		binary.BigEndian.PutUint64(rec[:8], seq)
		binary.BigEndian.PutUint64(rec[8:], ^seq)
		_ = s.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := s.conn.Write(rec[:]); err != nil {
			s.fail(fmt.Errorf("write record %d: %w", seq, err))
			return
		}
	}
}

func (s *tcpStream) read() {
	defer s.wg.Done()
	r := bufio.NewReader(s.srv)
	var rec [16]byte
	for seq := uint64(0); ; seq++ {
		_ = s.srv.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return // the writer closed its side: the end
			}
			s.fail(fmt.Errorf("read record %d: %w", seq, err))
			return
		}
		if got := binary.BigEndian.Uint64(rec[:8]); got != seq || binary.BigEndian.Uint64(rec[8:]) != ^seq {
			s.fail(fmt.Errorf("record %d arrived as %d (corrupted stream)", seq, got))
			return
		}
		now := time.Now()
		s.mu.Lock()
		if gap := now.Sub(s.last); gap > s.maxGap {
			s.maxGap = gap
		}
		s.last = now
		s.records++
		s.mu.Unlock()
	}
}

// snapshot returns records received, the longest gap so far and the
// first error, and resets the gap so each swap is measured on its own.
func (s *tcpStream) snapshot() (records int, maxGap time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	records, maxGap, err = s.records, s.maxGap, s.err
	s.maxGap = 0
	return
}

func (s *tcpStream) finish() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	s.conn.Close()
	s.srv.Close()
	s.ln.Close()
}

// monitor records the deletions netlink announces in a namespace (routes,
// neighbours, FDB entries) while it runs: `ip monitor` prints them as
// "Deleted …" lines.
type monitor struct {
	cmd *exec.Cmd
	out strings.Builder
	mu  sync.Mutex
}

func startMonitor(t *testing.T, ns string) *monitor {
	t.Helper()
	m := &monitor{cmd: exec.Command("ip", "-n", ns, "monitor", "route", "neigh", "link")}
	w := &lockedWriter{mu: &m.mu, w: &m.out}
	m.cmd.Stdout, m.cmd.Stderr = w, w
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// ip monitor subscribes right away; give it a moment before the swap.
	time.Sleep(100 * time.Millisecond)
	t.Cleanup(func() { _ = m.cmd.Process.Kill(); _ = m.cmd.Wait() })
	return m
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// deletedLink matches ip monitor's line for a deleted device of ours.
var deletedLink = regexp.MustCompile(`^Deleted \d+: flannel[-.]`)

// deleted stops the monitor and returns its "Deleted" lines that match
// any of the needles (subnets, addresses, MACs), or that delete one of
// our devices. The multicast neighbours the kernel keeps (and ages) on
// every device itself are not ours (kernelMulticastNeigh).
func (m *monitor) deleted(needles ...string) []string {
	time.Sleep(100 * time.Millisecond)
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	_ = m.cmd.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	var hits []string
	for _, line := range strings.Split(m.out.String(), "\n") {
		// The underlay's ARP/ND cache is the kernel's, not ours either.
		if !strings.HasPrefix(line, "Deleted") || kernelMulticastNeigh(line) || strings.Contains(line, "dev eth0 lladdr") {
			continue
		}
		if deletedLink.MatchString(line) {
			hits = append(hits, line)
			continue
		}
		for _, n := range needles {
			if n != "" && strings.Contains(line, n) {
				hits = append(hits, line)
				break
			}
		}
	}
	return hits
}

// kernelMulticastNeigh reports whether a "Deleted" line is a neighbour
// entry for a multicast address ("Deleted ff02::16 dev flannel.1 lladdr
// 33:33:00:00:00:16 NOARP"): the kernel creates those itself when the
// device sends MLD or DAD packets, and its neighbour GC removes them once
// idle for gc_stale_time (60 s), whenever that falls in a swap's window.
// Flannel never programs them.
func kernelMulticastNeigh(line string) bool {
	f := strings.Fields(line)
	if len(f) < 2 {
		return false
	}
	a, err := netip.ParseAddr(f[1])
	return err == nil && a.IsMulticast()
}

// hostState is what a swap must keep on the swapped host.
type hostState struct {
	// Lease describes the host's lease in the store; a swap must leave it
	// identical (etcd: the same key, created at the same revision; kube:
	// the same Node, podCIDRs and annotations).
	Lease string
	// LeaseErr is what is wrong with the lease as read (a second lease, an
	// annotated VTEP MAC that is not the device's).
	LeaseErr  error
	VtepMAC   string // flannel.<VNI>'s MAC, "" for host-gw
	VtepMACv6 string
	SubnetEnv string
}

// leaseReader describes h's lease in the cluster's store (hostState.Lease).
type leaseReader func(h *lab.Host) (string, error)

func (c *cluster) hostState(h *lab.Host, lease leaseReader) hostState {
	c.t.Helper()
	var st hostState
	st.Lease, st.LeaseErr = lease(h)
	st.VtepMAC = c.linkMAC(h, "flannel.1")
	st.VtepMACv6 = c.linkMAC(h, "flannel-v6.1")
	b, err := os.ReadFile(h.SubnetFile)
	if err != nil {
		c.t.Fatal(err)
	}
	st.SubnetEnv = string(b)
	return st
}

// etcdLease is the leaseReader of etcd mode: the key of h's lease (found
// by its PublicIP) and the revision that created it.
func (c *cluster) etcdLease(h *lab.Host) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.etcd.Get(ctx, "/coreos.com/network/subnets/", clientv3.WithPrefix())
	if err != nil {
		return "", err
	}
	var found string
	for _, kv := range resp.Kvs {
		var v struct{ PublicIP string }
		if json.Unmarshal(kv.Value, &v) == nil && v.PublicIP == h.IP.String() {
			if found != "" {
				return found, fmt.Errorf("%s holds two leases: %s and %s", h.NS, found, kv.Key)
			}
			found = fmt.Sprintf("%s (created at revision %d)", kv.Key, kv.CreateRevision)
		}
	}
	return found, nil
}

func (c *cluster) linkMAC(h *lab.Host, dev string) string {
	out, err := c.Exec(context.Background(), h, "cat", "/sys/class/net/"+dev+"/address")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// daemonReady waits until h's freshly started daemon has programmed its
// network: ours answers /readyz on its healthz port; upstream logs
// "Running backend." once its lease, subnet.env and backend are in place.
func (c *cluster) daemonReady(h *lab.Host, upstream bool, logFrom int64, healthzPort int) time.Duration {
	c.t.Helper()
	return waitFor(c.t, h.NS+" daemon ready", 30*time.Second, func() bool {
		if done, err := h.Exited(); done {
			c.t.Fatalf("%s: daemon exited: %v", h.NS, err)
		}
		if !upstream {
			code, _ := c.curl(h, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthzPort))
			return code == 200
		}
		b, err := os.ReadFile(h.LogFile)
		return err == nil && int64(len(b)) > logFrom && strings.Contains(string(b[logFrom:]), "Running backend.")
	})
}

func (c *cluster) linkMTU(h *lab.Host, dev string) int {
	out, err := c.Exec(context.Background(), h, "cat", "/sys/class/net/"+dev+"/mtu")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

func logSize(h *lab.Host) int64 {
	fi, err := os.Stat(h.LogFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}
