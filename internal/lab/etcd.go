package lab

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
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
