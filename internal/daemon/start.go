package daemon

// Start-up: the network config, the underlay, the backend and our lease.

import (
	"context"
	"errors"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/ctxsleep"
	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/httpapi"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/subnetenv"
	"github.com/weft-net/weft/internal/underlay"
)

func (d *daemon) run(ctx context.Context) error {
	net, err := d.networkConfig(ctx)
	if err != nil {
		return err
	}
	d.net = net
	if d.cfg.Preflight != nil {
		if err := d.cfg.Preflight(net); err != nil {
			return err
		}
	}
	u, err := underlay.Select(d.cfg.System, underlay.Options{
		Ifaces: d.opts.Iface, Regexes: d.opts.IfaceRegex, CanReach: d.opts.IfaceCanReach,
		PublicIP: d.opts.PublicIP, PublicIPv6: d.opts.PublicIPv6,
		IPv4: net.EnableIPv4, IPv6: net.EnableIPv6,
	})
	if err != nil {
		return err
	}
	d.log.Info("using interface", "name", u.Name, "public_ip", u.PublicIP, "public_ipv6", u.PublicIPv6, "mtu", u.MTU)

	prev, _ := subnetenv.Read(d.opts.SubnetFile) // absent on first start

	if err := d.makeBackend(u); err != nil {
		return err
	}
	d.host = httpapi.HostStatus{Network: str(net.Network), IPv6Network: str(net.IPv6Network),
		MTU: d.backend.MTU(), Underlay: u.Name, SubnetFile: d.opts.SubnetFile,
		Kube: d.opts.KubeSubnetMgr, ForwardRules: d.opts.IPTablesForwardRules}
	if d.net.Backend.Type == "vxlan" {
		d.host.TxChecksum = d.opts.VXLANTxChecksum
		if d.host.TxChecksum == config.TxChecksumAuto {
			d.host.TxChecksum += ":" + dataplane.TxChecksumSetting(d.opts.VXLANTxChecksum, d.cfg.KernelRelease).String()
		}
	}
	if err := d.acquire(ctx, prev); err != nil {
		return err
	}
	d.log.Info("lease acquired", "subnet", d.self.Subnet, "ipv6_subnet", d.self.IPv6Subnet,
		"backend", d.backend.Type(), "expires", d.self.Expiration.Format(time.RFC3339))
	d.cfg.Metrics.SetLeaseExpiry(d.self.Expiration)
	d.cfg.Health.LeaseHeld(true)
	return d.loop(ctx)
}

// defaultStoreAttempt bounds each startup call to the store. The etcd client
// waits for a usable connection for as long as a call's context allows, so
// an unbounded call against an endpoint that refuses us (a rejected client
// certificate, a server certificate from another CA) would hang without a
// word; bounded, each attempt fails with the connection error, which the
// retry loops below log.
const defaultStoreAttempt = 15 * time.Second

// storeAttempt is Config.StoreAttempt, or defaultStoreAttempt.
func (d *daemon) storeAttempt() time.Duration {
	if d.cfg.StoreAttempt > 0 {
		return d.cfg.StoreAttempt
	}
	return defaultStoreAttempt
}

// networkConfig waits for the network config to exist, as upstream does,
// so hosts can start before an operator writes it.
func (d *daemon) networkConfig(ctx context.Context) (*config.Network, error) {
	warned := false
	for {
		actx, cancel := context.WithTimeout(ctx, d.storeAttempt())
		raw, err := d.cfg.Store.NetworkConfig(actx)
		cancel()
		if err == nil {
			return config.ParseNetwork(raw)
		}
		if !errors.Is(err, lease.ErrNoNetworkConfig) || !warned {
			d.log.Warn("network config not available, retrying", "err", err)
			warned = true
		}
		if err := ctxsleep.For(ctx, time.Second); err != nil {
			return nil, err
		}
	}
}
