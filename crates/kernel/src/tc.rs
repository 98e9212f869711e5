//! Traffic control over rtnetlink: `ifb` devices, `tbf` and `ingress` qdiscs, and the u32 filter with a mirred
//! redirect that sends a device's ingress to an ifb (what the reference `bandwidth` plugin builds).
//!
//! `tbf`'s `TCA_OPTIONS` are not typed by netlink-packet-route, so they are encoded here: a nested
//! `TCA_TBF_PARMS` (`struct tc_tbf_qopt`, 36 bytes) and, for rates of 2^32 bytes/s and more, `TCA_TBF_RATE64`,
//! as vishvananda/netlink (the reference's library) sends them: no rate table, link layer unspecified.

use crate::error::{Error, Result};
use crate::link::Link;
use crate::netlink::{is_errno, Netlink};
use futures::TryStreamExt;
use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

/// `TCA_TBF_PARMS`.
const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`.
const TCA_TBF_RATE64: u16 = 4;
/// `TC_H_INGRESS` parent.
const TC_H_INGRESS: u32 = 0xffff_fff1;
/// `ETH_P_ALL`.
const ETH_P_ALL: u16 = 0x0003;

/// The kernel's packet scheduler clock: microseconds per tick, from `/proc/net/psched` as iproute2 and
/// vishvananda/netlink compute it (`t2us / us2t * clock_res / 1e6`); 15.625 on every current kernel.
pub fn tick_in_usec() -> f64 {
    std::fs::read_to_string("/proc/net/psched")
        .ok()
        .and_then(|s| parse_psched(&s))
        .unwrap_or(15.625)
}

/// Parses `/proc/net/psched` (four hex words) into microseconds per tick.
pub fn parse_psched(s: &str) -> Option<f64> {
    let mut w = s
        .split_whitespace()
        .map(|x| u32::from_str_radix(x, 16).ok());
    let t2us = f64::from(w.next()??);
    let us2t = f64::from(w.next()??);
    let mut clock_res = f64::from(w.next()??);
    if clock_res == 1_000_000_000.0 {
        // Like iproute2's get_clock_res: a 1 GHz clock reads as t2us.
        clock_res = t2us;
    }
    if us2t == 0.0 || t2us == 0.0 {
        return None;
    }
    Some(t2us / us2t * (clock_res / 1_000_000.0))
}

/// A token bucket: what a `tbf` qdisc is given and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// Rate in bytes per second.
    pub rate: u64,
    /// Bucket size in scheduler ticks (`tc_tbf_qopt.buffer`).
    pub buffer: u32,
    /// Queue limit in bytes.
    pub limit: u32,
}

impl Tbf {
    /// `TCA_OPTIONS` of a `tbf` qdisc, as the reference sends it.
    pub fn options(&self) -> Vec<TcOption> {
        let mut qopt = [0u8; 36];
        // struct tc_ratespec rate { cell_log, linklayer, overhead, cell_align, mpu, rate }: rate at 8..12.
        let rate32 = u32::try_from(self.rate).unwrap_or(u32::MAX);
        qopt[8..12].copy_from_slice(&rate32.to_ne_bytes());
        // peakrate (12..24) stays zero; then limit, buffer, mtu.
        qopt[24..28].copy_from_slice(&self.limit.to_ne_bytes());
        qopt[28..32].copy_from_slice(&self.buffer.to_ne_bytes());
        let mut o = vec![TcOption::Other(DefaultNla::new(
            TCA_TBF_PARMS,
            qopt.to_vec(),
        ))];
        if self.rate >= 1 << 32 {
            o.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            )));
        }
        o
    }

    /// Reads the bucket back from the (nested) `TCA_OPTIONS` bytes of a dumped `tbf` qdisc.
    pub fn parse(nested: &[u8]) -> Option<Self> {
        let mut rate = None;
        let mut rate64 = None;
        let (mut limit, mut buffer) = (0, 0);
        let mut rest = nested;
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([*rest.first()?, *rest.get(1)?]));
            let kind = u16::from_ne_bytes([*rest.get(2)?, *rest.get(3)?]) & 0x3fff;
            if len < 4 || len > rest.len() {
                return None;
            }
            let val = rest.get(4..len)?;
            let u32_at = |o: usize| -> Option<u32> {
                Some(u32::from_ne_bytes(val.get(o..o + 4)?.try_into().ok()?))
            };
            match kind {
                TCA_TBF_PARMS => {
                    rate = Some(u64::from(u32_at(8)?));
                    limit = u32_at(24)?;
                    buffer = u32_at(28)?;
                }
                TCA_TBF_RATE64 => {
                    rate64 = Some(u64::from_ne_bytes(val.get(0..8)?.try_into().ok()?));
                }
                _ => {}
            }
            let next = (len + 3) & !3;
            rest = rest.get(next.min(rest.len())..)?;
        }
        Some(Self {
            rate: rate64.or(rate)?,
            buffer,
            limit,
        })
    }
}

/// A qdisc as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Kind (`tbf`, `ingress`, `noqueue`, ...).
    pub kind: String,
    /// Handle (`major << 16 | minor`).
    pub handle: u32,
    /// Parent (`0xffffffff` root, `0xfffffff1` ingress).
    pub parent: u32,
    /// For `tbf`: its bucket.
    pub tbf: Option<Tbf>,
}

/// Whether a qdisc is the root one.
pub const ROOT: u32 = 0xffff_ffff;

fn handle_u32(h: TcHandle) -> u32 {
    (u32::from(h.major) << 16) | u32::from(h.minor)
}

impl Qdisc {
    fn from_message(m: &TcMessage) -> Self {
        let mut kind = String::new();
        let mut opts: Option<Vec<u8>> = None;
        for a in &m.attributes {
            match a {
                TcAttribute::Kind(k) => kind = k.clone(),
                TcAttribute::Options(o) => {
                    // Untyped kinds come back as one raw attribute holding the nested bytes.
                    if let Some(TcOption::Other(n)) = o.first() {
                        let mut v = vec![0u8; n.value_len()];
                        n.emit_value(&mut v);
                        opts = Some(v);
                    }
                }
                _ => {}
            }
        }
        let tbf = (kind == "tbf")
            .then(|| opts.as_deref().and_then(Tbf::parse))
            .flatten();
        Self {
            kind,
            handle: handle_u32(m.header.handle),
            parent: handle_u32(m.header.parent),
            tbf,
        }
    }
}

/// A u32 filter's redirect target, as dumped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The filter's parent qdisc.
    pub parent: u32,
    /// Index of the device it redirects to (egress redirect).
    pub to: u32,
}

impl Netlink {
    /// Creates an `ifb` device, up, with this MTU and transmit queue length; returns it.
    pub async fn create_ifb(&self, name: &str, mtu: u32, txqlen: u32) -> Result<Link> {
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(name.to_string())
            .mtu(mtu)
            .txqueuelen(txqlen)
            .up()
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {
                return Err(Error::Conflict(format!(
                    "a link named {name} already exists"
                )))
            }
            Err(e) => return Err(Error::nl(format!("create ifb {name}"), e)),
        }
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("ifb {name} after creating it")))
    }

    /// `RTM_NEWQDISC` with `NLM_F_CREATE | NLM_F_EXCL` (rtnetlink's request builder cannot carry options).
    async fn add_qdisc(&self, what: &str, msg: TcMessage) -> Result<()> {
        use futures::StreamExt;
        use netlink_packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
        };
        use netlink_packet_route::RouteNetlinkMessage;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let mut handle = self.handle.clone();
        let mut resp = handle
            .request(req)
            .map_err(|e| Error::nl(format!("add {what} qdisc"), e))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(Error::nl(
                        format!("add {what} qdisc"),
                        rtnetlink::Error::NetlinkError(e),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds a root `tbf` qdisc with handle `1:` (`tc qdisc add dev D root handle 1: tbf ...`).
    pub async fn add_tbf(&self, index: u32, tbf: &Tbf) -> Result<()> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.handle = TcHandle { major: 1, minor: 0 };
        m.header.parent = TcHandle::ROOT;
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(tbf.options()));
        self.add_qdisc(&format!("tbf on link #{index}"), m).await
    }

    /// Adds the `ingress` qdisc (`ffff:`).
    pub async fn add_ingress_qdisc(&self, index: u32) -> Result<()> {
        let mut m = TcMessage::with_index(index as i32);
        m.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        m.header.parent = TC_H_INGRESS.into();
        m.attributes.push(TcAttribute::Kind("ingress".into()));
        m.attributes.push(TcAttribute::Options(vec![]));
        self.add_qdisc(&format!("ingress on link #{index}"), m)
            .await
    }

    /// Adds a u32 filter on the ingress qdisc of `index` matching every packet, with flowid `1:1`, whose action
    /// redirects it to the egress of `to` (`tc filter add dev D parent ffff: protocol all prio 1 u32 match u32
    /// 0 0 flowid 1:1 action mirred egress redirect dev TO`).
    pub async fn add_redirect_filter(&self, index: u32, to: u32) -> Result<()> {
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()];
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut mirror = TcMirror::default();
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let req = self
            .handle
            .traffic_filter(index as i32)
            .add()
            .parent(0xffff_0000)
            .priority(1)
            .protocol(ETH_P_ALL.to_be())
            .u32(&[
                TcFilterU32Option::ClassId(TcHandle { major: 1, minor: 1 }),
                TcFilterU32Option::Selector(sel),
                TcFilterU32Option::Action(vec![action]),
            ])
            .map_err(|e| Error::nl("build redirect filter", e))?;
        req.execute()
            .await
            .map_err(|e| Error::nl(format!("add redirect filter on link #{index}"), e))
    }

    /// The qdiscs of link `index`.
    pub async fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>> {
        let msgs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl(format!("list qdiscs of link #{index}"), e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index as i32)
            .map(Qdisc::from_message)
            .collect())
    }

    /// The egress redirects of the u32 filters on the ingress qdisc of link `index`.
    pub async fn ingress_redirects(&self, index: u32) -> Result<Vec<Redirect>> {
        let msgs: Vec<TcMessage> = self
            .handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::nl(format!("list filters of link #{index}"), e))?;
        let mut out = Vec::new();
        for m in &msgs {
            for a in &m.attributes {
                let TcAttribute::Options(opts) = a else {
                    continue;
                };
                for o in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = o else {
                        continue;
                    };
                    for act in actions {
                        for aa in &act.attributes {
                            let TcActionAttribute::Options(ao) = aa else {
                                continue;
                            };
                            for x in ao {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = x {
                                    if p.eaction == TcMirrorActionType::EgressRedir {
                                        out.push(Redirect {
                                            parent: handle_u32(m.header.parent),
                                            to: p.ifindex,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psched() {
        assert_eq!(
            parse_psched("000003e8 00000040 000f4240 3b9aca00\n"),
            Some(15.625)
        );
        assert_eq!(parse_psched("garbage"), None);
        assert_eq!(parse_psched("1 0 1 1"), None);
    }

    #[test]
    fn tbf_roundtrip() {
        for t in [
            Tbf {
                rate: 1_250_000,
                buffer: 3_125_000,
                limit: 281_250,
            },
            Tbf {
                rate: 1 << 33,
                buffer: 7,
                limit: 9,
            },
        ] {
            let mut nested = Vec::new();
            for o in t.options() {
                let TcOption::Other(n) = o else { panic!() };
                let mut v = vec![0u8; n.value_len()];
                n.emit_value(&mut v);
                let len = 4 + v.len();
                nested.extend_from_slice(&(len as u16).to_ne_bytes());
                nested.extend_from_slice(&n.kind().to_ne_bytes());
                nested.extend_from_slice(&v);
                nested.resize((nested.len() + 3) & !3, 0);
            }
            assert_eq!(Tbf::parse(&nested), Some(t));
        }
    }

    proptest::proptest! {
        #[test]
        fn tbf_parse_never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = Tbf::parse(&b);
        }
    }
}
