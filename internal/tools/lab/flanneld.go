package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Start runs flanneld on h with the cluster's etcd and extra flags.
func (c *Cluster) Start(h *Host, extra ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc != nil {
		return fmt.Errorf("%s: flanneld already running", h.NS)
	}
	if err := os.MkdirAll(filepath.Dir(h.SubnetFile), 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(h.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	bin := c.opts.Flanneld
	if h.Flanneld != "" {
		bin = h.Flanneld
	}
	if err := os.MkdirAll(h.wireguardDir(), 0o700); err != nil {
		return err
	}
	args := append(h.inNS(bin,
		"--etcd-endpoints="+c.EtcdEndpoint,
		"--iface=eth0",
		"--subnet-file="+h.SubnetFile,
	), extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The WireGuard key file (upstream's default /run/flannel/wgkey) would
	// be one for every lab host: each gets its own unless told otherwise.
	cmd.Env = append(os.Environ(), "WIREGUARD_KEY_FILE="+filepath.Join(filepath.Dir(h.SubnetFile), "wgkey"))
	cmd.Env = append(cmd.Env, h.Env...)
	// Own process group, so a Ctrl-C to the test does not hit it first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	h.proc, h.done, h.err = cmd, make(chan struct{}), nil
	go func(done chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		h.mu.Lock()
		h.err = err
		h.mu.Unlock()
		close(done)
	}(h.done)
	return nil
}

// Stop sends sig to h's flanneld and waits for it to exit, returning its
// exit error (nil for a clean exit).
func (c *Cluster) Stop(h *Host, sig syscall.Signal) error {
	h.mu.Lock()
	cmd, done := h.proc, h.done
	h.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.proc = nil
	return h.err
}

// Exited reports whether h's flanneld has exited on its own, and how.
func (h *Host) Exited() (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done == nil {
		return false, nil
	}
	select {
	case <-h.done:
		return true, h.err
	default:
		return false, nil
	}
}

// Pid returns the process ID of h's running flanneld, or 0. The daemon
// runs under `ip netns exec` and `sh -c … exec`, both of which exec, so
// the ID is the daemon's own (its /proc/PID/status is the daemon's).
func (h *Host) Pid() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.proc == nil || h.proc.Process == nil {
		return 0
	}
	return h.proc.Process.Pid
}

// Exec runs a command inside h's namespace and returns its combined output.
func (c *Cluster) Exec(ctx context.Context, h *Host, name string, args ...string) (string, error) {
	if err := os.MkdirAll(h.wireguardDir(), 0o700); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "ip", h.inNS(name, args...)...).CombinedOutput()
	return string(out), err
}
