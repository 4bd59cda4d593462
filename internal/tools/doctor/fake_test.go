package doctor

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// fakeHost is a Host made of plain data; its writes change that data, so
// a fix is seen by the check's next run.
type fakeHost struct {
	sysctls map[string]string
	links   []Link
	routes  []Route
	txcsum  map[string]bool
	release string
	procs   []Process
	files   map[string]string
	forward Chain
}

var _ Host = (*fakeHost)(nil)

func (h *fakeHost) Sysctl(name string) (string, error) {
	v, ok := h.sysctls[name]
	if !ok {
		return "", fmt.Errorf("/proc/sys/%s: %w", name, fs.ErrNotExist)
	}
	return v, nil
}

func (h *fakeHost) SetSysctl(name, value string) error {
	if _, ok := h.sysctls[name]; !ok {
		return fs.ErrNotExist
	}
	h.sysctls[name] = value
	return nil
}

func (h *fakeHost) Links() ([]Link, error)   { return h.links, nil }
func (h *fakeHost) Routes() ([]Route, error) { return h.routes, nil }

func (h *fakeHost) TxChecksum(dev string) (bool, error) {
	on, ok := h.txcsum[dev]
	if !ok {
		return false, fmt.Errorf("no device %s", dev)
	}
	return on, nil
}

func (h *fakeHost) SetTxChecksum(dev string, on bool) error { h.txcsum[dev] = on; return nil }
func (h *fakeHost) KernelRelease() string                   { return h.release }
func (h *fakeHost) Processes() ([]Process, error)           { return h.procs, nil }

func (h *fakeHost) ReadFile(path string) ([]byte, error) {
	s, ok := h.files[path]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
	}
	return []byte(s), nil
}

func (h *fakeHost) Forward() (Chain, error) { return h.forward, nil }

type fakeStore struct {
	leases []lease.Event
	skew   time.Duration
}

func (s fakeStore) Leases(context.Context) ([]lease.Event, error) { return s.leases, nil }
func (s fakeStore) Clock(context.Context) (time.Time, time.Duration, error) {
	return time.Now().Add(s.skew), time.Millisecond, nil
}

// fakeReach answers UDP from the peers in udp and DF probes up to mtu.
type fakeReach struct {
	udp map[netip.Addr]bool
	mtu int
}

func (r fakeReach) UDP(_ context.Context, dst netip.Addr) (bool, error) { return r.udp[dst], nil }
func (r fakeReach) DF(_ context.Context, _ netip.Addr, size int) (bool, error) {
	return size <= r.mtu, nil
}
