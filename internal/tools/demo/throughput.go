package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/internal/tools/lab"
)

// throughput measures TCP throughput with iperf3, pod-to-pod across two
// hosts and host-to-host over the underlay, for the ratio.
func (r *run) throughput(ctx context.Context) *Throughput {
	tp := &Throughput{}
	var a, b *Pod
	for i := range r.res.PodList {
		p := &r.res.PodList[i]
		if a == nil {
			a = p
		} else if p.Host != a.Host {
			b = p
			break
		}
	}
	if b == nil {
		tp.Error = "needs pods on two hosts"
		return tp
	}
	dst := b.IPv4
	if dst == "" {
		dst = b.IPv6
	}
	var err error
	if tp.PodToPodMbps, err = iperf(ctx, a.ns, b.ns, dst); err != nil {
		tp.Error = "pod-to-pod: " + err.Error()
		return tp
	}
	hostDst := b.pod.Host.IP.String()
	if r.o.IPv6Only {
		hostDst = b.pod.Host.IPv6.String()
	}
	if tp.HostToHostMbps, err = iperf(ctx, a.pod.Host.NS, b.pod.Host.NS, hostDst); err != nil {
		tp.Error = "host-to-host: " + err.Error()
		return tp
	}
	if r.o.Backend != "vxlan" {
		if tp.VXLANMbps, err = r.referenceVXLAN(ctx, a.pod.Host, b.pod.Host); err != nil {
			tp.Error = "vxlan reference: " + err.Error()
			return tp
		}
	}
	if tp.HostToHostMbps > 0 {
		tp.Ratio = tp.PodToPodMbps / tp.HostToHostMbps
	}
	if r.o.UpstreamFlanneld != "" {
		if tp.UpstreamMbps, err = r.upstreamUDP(ctx, a, b); err != nil {
			tp.Error = "upstream udp: " + err.Error()
		}
	}
	return tp
}

// upstreamUDP measures pod a to pod b again with upstream's flanneld (its
// udp backend: the C proxy) on both their hosts: ours is stopped there,
// upstream takes the same leases (it reuses the lease holding its public
// IP) and makes its own flannel0, the pods stay as they are; afterwards
// ours comes back.
func (r *run) upstreamUDP(ctx context.Context, a, b *Pod) (float64, error) {
	hosts := []*lab.Host{a.pod.Host, b.pod.Host}
	ours := hosts[0].Flanneld
	swap := func(bin string) error {
		for _, h := range hosts {
			if err := r.c.Stop(h, syscall.SIGTERM); err != nil {
				return fmt.Errorf("%s: stop flanneld: %w", h.NS, err)
			}
			h.Flanneld = bin
			if err := r.c.Start(h, "--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", HealthzPort)); err != nil {
				return err
			}
		}
		return nil
	}
	defer func() { _ = swap(ours) }()
	if err := swap(r.o.UpstreamFlanneld); err != nil {
		return 0, err
	}
	// Up once a ping goes through upstream's proxies both ways.
	dst := b.IPv4
	deadline := time.Now().Add(30 * time.Second)
	for exec.CommandContext(ctx, "ip", "netns", "exec", a.ns, "ping", "-c", "1", "-W", "1", dst).Run() != nil {
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("pod %s does not reach %s with upstream flanneld on both hosts", a.Name, dst)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return iperf(ctx, a.ns, b.ns, dst)
}

// referenceVXLAN measures a kernel VXLAN tunnel between hosts a and b,
// built by hand beside the demo's own devices (VNI 4242, port 4799, inner
// addresses 198.18.201.1 and .2) over the underlay family the demo uses,
// and removed afterwards.
func (r *run) referenceVXLAN(ctx context.Context, a, b *lab.Host) (float64, error) {
	const dev = "wtref"
	ends := []struct {
		h      *lab.Host
		inner  string
		local  netip.Addr
		remote netip.Addr
	}{{a, "198.18.201.1/30", a.IP, b.IP}, {b, "198.18.201.2/30", b.IP, a.IP}}
	if r.o.IPv6Only {
		ends[0].local, ends[0].remote, ends[1].local, ends[1].remote = a.IPv6, b.IPv6, b.IPv6, a.IPv6
	}
	for _, e := range ends {
		for _, args := range [][]string{
			{"link", "add", dev, "type", "vxlan", "id", "4242", "dstport", "4799", "local", e.local.String(), "remote", e.remote.String(), "dev", "eth0"},
			{"addr", "add", e.inner, "dev", dev},
			{"link", "set", dev, "up"},
		} {
			if out, err := exec.CommandContext(ctx, "ip", append([]string{"-n", e.h.NS}, args...)...).CombinedOutput(); err != nil {
				return 0, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			}
		}
		defer exec.Command("ip", "-n", e.h.NS, "link", "del", dev).Run()
	}
	return iperf(ctx, a.NS, b.NS, "198.18.201.2")
}

func iperf(ctx context.Context, clientNS, serverNS, dst string) (float64, error) {
	// A persistent server (not -1): a client attempt that races the
	// server's start must not use up its one session.
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", serverNS, "iperf3", "-s", "-p", "5201")
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var lastErr error
	for try := 0; try < 20; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", clientNS, "iperf3", "-c", dst, "-p", "5201", "-t", "2", "-J").Output()
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal(out, &res); jerr != nil && err == nil {
			err = jerr
		}
		switch {
		case err != nil:
			lastErr = fmt.Errorf("iperf3 -c %s: %w %s", dst, err, res.Error)
		case res.End.SumReceived.BitsPerSecond == 0:
			lastErr = fmt.Errorf("iperf3 -c %s: no data received %s", dst, res.Error)
		default:
			return res.End.SumReceived.BitsPerSecond / 1e6, nil
		}
	}
	return 0, lastErr
}
