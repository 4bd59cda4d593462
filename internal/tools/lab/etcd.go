package lab

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Etcd is an embedded single-member etcd on 127.0.0.1. It can be stopped
// and started again on the same data and ports, as an etcd restart or
// outage looks to its clients.
type Etcd struct {
	dir          string
	client, peer url.URL
	mu           sync.Mutex
	e            *embed.Etcd // nil while stopped
	// ClientURL is the client endpoint (http://127.0.0.1:port).
	ClientURL string
}

// freePort asks the kernel for a free loopback port. etcd's embed needs
// concrete ports in its advertised URLs, so port 0 cannot be passed on.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartEtcd starts an embedded etcd with its data in dir. Another process
// can grab a port between freePort and etcd's bind; a few retries make
// that race harmless.
func StartEtcd(dir string) (*Etcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		cp, err := freePort()
		if err != nil {
			return nil, err
		}
		pp, err := freePort()
		if err != nil {
			return nil, err
		}
		cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", cp))
		pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pp))
		e := &Etcd{dir: dir, client: *cu, peer: *pu, ClientURL: cu.String()}
		if lastErr = e.Start(); lastErr == nil {
			return e, nil
		}
	}
	return nil, fmt.Errorf("start embedded etcd: %w", lastErr)
}

// Start starts a stopped etcd again, on the same data directory and
// ports, and returns once it serves clients. Starting a running one does
// nothing.
func (e *Etcd) Start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.e != nil {
		return nil
	}
	cfg := embed.NewConfig()
	cfg.Dir = e.dir
	cfg.Name = "lab"
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{e.client}, []url.URL{e.client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{e.peer}, []url.URL{e.peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(e.dir, "etcd.log")}
	ee, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	select {
	case <-ee.Server.ReadyNotify():
		e.e = ee
		return nil
	case err := <-ee.Err():
		ee.Close()
		return err
	case <-time.After(30 * time.Second):
		ee.Close()
		return fmt.Errorf("embedded etcd not ready after 30s")
	}
}

// Stop stops etcd: its clients lose their connections and find nothing
// listening until Start. Stopping a stopped one does nothing.
func (e *Etcd) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.e != nil {
		e.e.Close()
		e.e = nil
	}
}

// Close stops etcd; closing twice is harmless.
func (e *Etcd) Close() { e.Stop() }

func (c *Cluster) startEtcdProcess(ctx context.Context, hubAddr string) error {
	urlFile := filepath.Join(c.opts.Dir, "etcd.url")
	_ = os.Remove(urlFile)
	logf, err := os.Create(filepath.Join(c.opts.Dir, "etcd-process.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append(append([]string(nil), c.opts.EtcdCommand[1:]...),
		"--dir", filepath.Join(c.opts.Dir, "etcd"), "--hub-ns", c.Hub, "--hub-addr", hubAddr, "--url-file", urlFile)
	cmd := exec.Command(c.opts.EtcdCommand[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd process: %w", err)
	}
	c.etcdProc = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if b, err := os.ReadFile(urlFile); err == nil && len(b) > 0 {
			c.EtcdClientURL = strings.TrimSpace(string(b))
			return nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("etcd process exited: %v: %s", err, out)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ServeEtcd runs an embedded etcd in dir, reachable from namespace hubNS
// at hubAddr through a relay, writes its client URL to urlFile, and runs
// until ctx ends. It is the body of the EtcdCommand process.
func ServeEtcd(ctx context.Context, dir, hubNS, hubAddr, urlFile string) error {
	e, err := StartEtcd(dir)
	if err != nil {
		return err
	}
	defer e.Close()
	l, err := listenIn(hubNS, hubAddr)
	if err != nil {
		return err
	}
	defer l.Close()
	go relay(l, "", strings.TrimPrefix(e.ClientURL, "http://"))
	if err := os.WriteFile(urlFile+".tmp", []byte(e.ClientURL+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(urlFile+".tmp", urlFile); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}
