package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weft-net/weft/internal/tools/podrt"
)

// Pods attaches pod namespaces to hosts through the flannel CNI plugin with
// libcni and kube-flannel's conflist, as a container runtime does. The demo
// and the end-to-end tests use it.
type Pods struct {
	// Runtime re-executes a binary serving podrt requests (weft
	// pod-runtime) inside the host's namespace.
	Runtime podrt.Client
	// BinDir holds the flannel CNI plugin and the reference plugins.
	BinDir string
}

// Pod is a network namespace attached to a host.
type Pod struct {
	// NS is the pod's network namespace (also its CNI container ID).
	NS         string
	Host       *Host
	IPv4, IPv6 netip.Addr
}

// Conflist is kube-flannel's cni-conf.json, with h's subnet file and a
// data directory beside it.
func Conflist(h *Host) []byte {
	return []byte(fmt.Sprintf(`{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [
    {"type": "flannel", "subnetFile": %q, "dataDir": %q,
     "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`, h.SubnetFile, filepath.Join(filepath.Dir(h.SubnetFile), "cni")))
}

func (p Pods) request(op string, h *Host, ns string) podrt.Request {
	return podrt.Request{
		Op: op, BinDir: p.BinDir, CacheDir: filepath.Join(filepath.Dir(h.SubnetFile), "cache"),
		Conflist: Conflist(h), ContainerID: ns, NetNS: "/run/netns/" + ns, IfName: "eth0",
	}
}

// Add creates namespace ns and attaches it to h (CNI ADD). On error the
// namespace is removed again.
func (p Pods) Add(ctx context.Context, h *Host, ns string) (*Pod, error) {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", ns, err, out)
	}
	_ = exec.CommandContext(ctx, "ip", "-n", ns, "link", "set", "lo", "up").Run()
	pod, err := p.add(ctx, h, ns)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		return nil, err
	}
	return pod, nil
}

func (p Pods) add(ctx context.Context, h *Host, ns string) (*Pod, error) {
	raw, err := p.Runtime.Do(ctx, h.NS, p.request("add", h, ns))
	if err != nil {
		return nil, fmt.Errorf("%s: CNI ADD: %w", ns, err)
	}
	cur, err := currentResult(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: CNI ADD result: %w", ns, err)
	}
	pod := &Pod{NS: ns, Host: h}
	for _, ipc := range cur.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			if a = a.Unmap(); a.Is4() {
				pod.IPv4 = a
			} else {
				pod.IPv6 = a
			}
		}
	}
	return pod, nil
}

func currentResult(raw json.RawMessage) (*types100.Result, error) {
	res, err := types100.NewResult(raw)
	if err != nil {
		return nil, err
	}
	return types100.NewResultFromResult(res)
}

// Check runs CNI CHECK for pod.
func (p Pods) Check(ctx context.Context, pod *Pod) error {
	if _, err := p.Runtime.Do(ctx, pod.Host.NS, p.request("check", pod.Host, pod.NS)); err != nil {
		return fmt.Errorf("%s: CNI CHECK: %w", pod.NS, err)
	}
	return nil
}

// Del detaches pod (CNI DEL, releasing its address) and removes its
// namespace; it returns DEL's error, the namespace is removed regardless.
func (p Pods) Del(ctx context.Context, pod *Pod) error {
	_, err := p.Runtime.Do(ctx, pod.Host.NS, p.request("del", pod.Host, pod.NS))
	_ = exec.Command("ip", "netns", "del", pod.NS).Run()
	return err
}
