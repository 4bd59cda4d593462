package dataplane

import (
	"fmt"

	"github.com/safchain/ethtool"

	"github.com/weft-net/weft/internal/nsrun"
)

// The ethtool ioctl socket is opened in the handle's namespace (a socket
// keeps the namespace it was created in), once, on first use.

func (n *Netlink) ethtool() (*ethtool.Ethtool, error) {
	if n.eth != nil {
		return n.eth, nil
	}
	open := func() (err error) {
		n.eth, err = ethtool.NewEthtool()
		return err
	}
	var err error
	if n.ns.IsOpen() {
		err = nsrun.Do(n.ns, open)
	} else {
		err = open()
	}
	if err != nil {
		return nil, fmt.Errorf("open ethtool socket: %w", err)
	}
	return n.eth, nil
}

// txChecksum implements kernel: it returns the TX checksum offload of device name.
func (n *Netlink) txChecksum(name string) (Offload, error) {
	e, err := n.ethtool()
	if err != nil {
		return OffloadAsIs, err
	}
	f, err := e.Features(name)
	if err != nil {
		return OffloadAsIs, fmt.Errorf("read features of %s: %w", name, err)
	}
	on, ok := f[TxChecksumFeature]
	switch {
	case !ok:
		return OffloadAsIs, nil
	case on:
		return OffloadOn, nil
	}
	return OffloadOff, nil
}

// setTxChecksum turns the TX checksum offload of device name on or off.
func (n *Netlink) setTxChecksum(name string, o Offload) error {
	e, err := n.ethtool()
	if err != nil {
		return err
	}
	if err := e.Change(name, map[string]bool{TxChecksumFeature: o == OffloadOn}); err != nil {
		return fmt.Errorf("set %s %s on %s: %w", TxChecksumFeature, o, name, err)
	}
	return nil
}
