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

// Etcd is an embedded single-member etcd on 127.0.0.1.
type Etcd struct {
	e    *embed.Etcd
	once sync.Once
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
		cfg := embed.NewConfig()
		cfg.Dir = dir
		cfg.Name = "lab"
		cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", cp))
		pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", pp))
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
		cfg.LogLevel = "error"
		cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			lastErr = err
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			return &Etcd{e: e, ClientURL: cu.String()}, nil
		case err := <-e.Err():
			e.Close()
			lastErr = err
		case <-time.After(30 * time.Second):
			e.Close()
			return nil, fmt.Errorf("embedded etcd not ready after 30s")
		}
	}
	return nil, fmt.Errorf("start embedded etcd: %w", lastErr)
}

// Close stops etcd; closing twice is harmless.
func (e *Etcd) Close() { e.once.Do(e.e.Close) }
