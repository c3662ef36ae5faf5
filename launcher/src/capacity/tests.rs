use super::*;
use proto::spec::{Capacity, Market};
use std::collections::BTreeMap;

/// A small fixed catalog: two H100 x8 offers (one with InfiniBand, one
/// with EFA), an A100 x1 and an L4 x1 without spot.
fn catalog() -> Catalog {
    let o = |it: &str,
             region: &str,
             gpu: &str,
             n: u32,
             mem: f64,
             inter: &str,
             od: f64,
             spot: Option<f64>,
             b: Option<&str>| Offer {
        cloud: "test".into(),
        region: region.into(),
        zones: vec![format!("{region}-a")],
        instance_type: it.into(),
        gpu: gpu.into(),
        gpus: n,
        gpu_memory_gb: mem,
        gpu_bf16_tflops: 100.0,
        interconnect: Interconnect {
            intra: "NVSwitch".into(),
            intra_gb_per_s: 900.0,
            inter: inter.into(),
            inter_gbit_per_s: 400.0,
        },
        price_per_hour: Prices {
            on_demand: od,
            spot,
            reserved_1y: Some(od * 0.6),
            reserved_3y: None,
        },
        spot_interruption: b.map(str::to_string),
        sources: BTreeMap::new(),
        estimated: vec!["spot".into()],
        as_of: "2026-11".into(),
        dates: BTreeMap::new(),
        short_term: vec![],
    };
    Catalog {
        format_version: 1,
        about: String::new(),
        offers: vec![
            o(
                "ib8",
                "r1",
                "H100",
                8,
                80.0,
                "InfiniBand",
                100.0,
                Some(45.0),
                Some(">20%"),
            ),
            o(
                "efa8",
                "r2",
                "H100",
                8,
                80.0,
                "EFA",
                90.0,
                Some(45.0),
                Some("<5%"),
            ),
            o(
                "a100x1",
                "r1",
                "A100",
                1,
                40.0,
                "Ethernet",
                4.0,
                Some(1.5),
                Some("5-10%"),
            ),
            o("l4x1", "r2", "L4", 1, 24.0, "Ethernet", 0.7, None, None),
        ],
    }
}

fn req(nodes: u32, gpus: u32, accel: &str, f: impl FnOnce(&mut Capacity)) -> Request {
    let mut c = Capacity::default();
    f(&mut c);
    Request::new(nodes, gpus, accel, &c)
}

#[test]
fn the_pick_the_fallback_and_the_misfits() {
    // (request, expected pick (instance, market), expected fallback)
    let table: Vec<(Request, (&str, Buy), Option<&str>)> = vec![
        // Spot first: the same spot price, but efa8 is interrupted far
        // less, so its expected total is lower; on-demand efa8 is the
        // cheaper fallback.
        (req(2, 8, "h100", |_| {}), ("efa8", Buy::Spot), Some("efa8")),
        // InfiniBand required between nodes: only ib8 fits.
        (
            req(2, 8, "h100", |c| c.interconnect = "infiniband".into()),
            ("ib8", Buy::Spot),
            Some("ib8"),
        ),
        // One node needs no interconnect; on-demand only.
        (
            req(1, 8, "h100", |c| c.market = Market::OnDemand),
            ("efa8", Buy::OnDemand),
            None,
        ),
        // Reserved: the 1-year price of the cheaper offer.
        (
            req(1, 8, "h100", |c| c.market = Market::Reserved),
            ("efa8", Buy::Reserved1y),
            None,
        ),
        // Cheapest across markets for one A100.
        (
            req(1, 1, "a100", |c| c.market = Market::Cheapest),
            ("a100x1", Buy::Spot),
            None,
        ),
        // No spot for L4: on-demand is the pick, with no fallback.
        (req(1, 1, "l4", |_| {}), ("l4x1", Buy::OnDemand), None),
        // A price cap leaves only what fits under it (2 x $100 > $190).
        (
            req(2, 8, "cuda", |c| {
                c.max_price_per_hour = Some(190.0);
                c.market = Market::OnDemand
            }),
            ("efa8", Buy::OnDemand),
            None,
        ),
    ];
    for (i, (r, (inst, market), fallback)) in table.into_iter().enumerate() {
        let got = rank(&catalog(), &r).unwrap_or_else(|e| panic!("row {i}: {e}"));
        let pick = &got.candidates[0];
        assert_eq!(
            (pick.instance_type.as_str(), pick.market, pick.role),
            (inst, market, "pick"),
            "row {i}: {}",
            got.reason
        );
        let fb = got
            .candidates
            .iter()
            .find(|c| c.role == "fallback")
            .map(|c| c.instance_type.as_str());
        assert_eq!(fb, fallback, "row {i}");
        assert!(got.reason.contains(inst), "row {i}: {}", got.reason);
    }
}

#[test]
fn a_reservation_is_priced_as_the_commitment_it_is() {
    // (expected hours, fleet hours a year, pick's market, the 1-year
    // reservation's expected cost for 2 x ib8 at $60/h each)
    let table: &[(f64, Option<f64>, Buy, f64)] = &[
        // A 48 h job would buy a whole year: on-demand wins.
        (48.0, None, Buy::OnDemand, 120.0 * 8760.0),
        // A fleet busy 8000 h a year: the job pays its 48 h share.
        (
            48.0,
            Some(8000.0),
            Buy::Reserved1y,
            120.0 * 8760.0 * 48.0 / 8000.0,
        ),
    ];
    for (hours, fleet, pick, cost) in table {
        let r = rank(
            &catalog(),
            &req(2, 8, "h100", |c| {
                c.market = Market::Cheapest;
                c.interconnect = "infiniband".into();
                c.expected_hours = *hours;
                c.fleet_hours_per_year = *fleet;
            }),
        )
        .unwrap();
        let non_spot: Vec<_> = r
            .candidates
            .iter()
            .filter(|c| c.market != Buy::Spot)
            .collect();
        assert_eq!(non_spot[0].market, *pick, "{hours} h, fleet {fleet:?}");
        let res = r
            .candidates
            .iter()
            .find(|c| c.market == Buy::Reserved1y)
            .unwrap();
        assert!(
            (res.expected_cost - cost).abs() < 1e-6,
            "{}",
            res.expected_cost
        );
        assert_eq!(res.commitment_usd, Some(120.0 * 8760.0));
        // $60/h all year = $100/h on demand for 5256 h.
        assert!((res.break_even_hours_per_year.unwrap() - 5256.0).abs() < 1e-6);
    }
}

#[test]
fn old_prices_are_flagged_with_their_date() {
    let mut cat = catalog();
    cat.offers[0]
        .dates
        .insert("on_demand".into(), "2024-06".into());
    let r = rank(
        &cat,
        &req(2, 8, "h100", |c| {
            c.market = Market::OnDemand;
            c.interconnect = "infiniband".into();
        }),
    )
    .unwrap();
    assert_eq!(r.candidates[0].price_as_of, "2024-06");
    assert!(r.candidates[0].price_stale);
    let text = human(&r);
    assert!(text.contains("STALE price (as of 2024-06"), "{text}");
    assert!(text.contains("not considered:\n  efa8 (r2): "), "{text}");
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_209_952);
    assert_eq!(months_old("2026-11", now), Some(1));
    assert_eq!(months_old("2024-06", now), Some(30));
    assert_eq!(months_old("junk", now), None);
}

#[test]
fn offers_that_do_not_fit_are_rejected_with_their_reason() {
    let got = rank(
        &catalog(),
        &req(2, 8, "h100", |c| c.regions = vec!["r2".into()]),
    )
    .unwrap();
    let reasons: BTreeMap<_, _> = got
        .rejected
        .iter()
        .map(|r| (r.instance_type.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(reasons["ib8"], "region r1 is not allowed");
    assert_eq!(reasons["a100x1"], "A100 GPUs, not H100");
    assert!(got.candidates.iter().all(|c| c.instance_type == "efa8"));
}

#[test]
fn impossible_requests_are_clear_errors() {
    let e = rank(
        &catalog(),
        &req(2, 8, "h100", |c| {
            c.interconnect = "infiniband".into();
            c.regions = vec!["r2".into()]
        }),
    )
    .unwrap_err();
    assert!(e.starts_with("no offer has 2 node(s) x 8 x H100 and InfiniBand between nodes in the allowed regions (r2)"), "{e}");
    let e = rank(&catalog(), &req(1, 4, "a100", |_| {})).unwrap_err();
    assert!(
        e.contains("no offer has 1 node(s) x 4 x A100")
            && e.contains("a100x1 in r1: 1 GPUs per instance, the job uses 4"),
        "{e}"
    );
    let e = rank(&catalog(), &req(1, 1, "l4", |c| c.market = Market::Spot)).unwrap_err();
    assert!(e.contains("no spot price"), "{e}");
}

#[test]
fn expected_preemptions_follow_the_bracket() {
    let cat = catalog();
    let c = Capacity {
        expected_hours: 730.0,
        checkpoint_every_minutes: 60.0,
        recovery_minutes: 30.0,
        ..Capacity::default()
    };
    // >20% a month (25%) on 2 nodes for a month: 0.5 preemptions, each
    // losing half an hour of work and half an hour of recovery.
    let (pre, over, hours) = expectations(&cat.offers[0], Buy::Spot, 2, &c);
    assert!((pre - 0.5).abs() < 1e-9 && (over - 0.5).abs() < 1e-9 && (hours - 730.5).abs() < 1e-9);
    assert_eq!(expectations(&cat.offers[0], Buy::OnDemand, 2, &c).0, 0.0);
}

#[test]
fn the_step_model_and_the_compare_ranking() {
    let cat = catalog();
    let work = StepWork {
        tflop: 100.0,
        gradient_gb: 1.0,
    };
    // One node of 8 GPUs at 100 TFLOP/s, MFU 0.5: 100 / (8 x 100 x 0.5)
    // = 0.25 s; all-reduce 2 x 7/8 x 1 GB / 900 GB/s.
    let (compute, ar) = model_step(&cat.offers[0], 1, work, 0.5);
    assert!((compute - 0.25).abs() < 1e-12);
    assert!((ar - 2.0 * 7.0 / 8.0 / 900.0).abs() < 1e-12);
    // Two nodes: 16 GPUs, the 400 Gbit/s network (50 GB/s) is the link.
    let (compute, ar) = model_step(&cat.offers[0], 2, work, 0.5);
    assert!((compute - 0.125).abs() < 1e-12);
    assert!((ar - 2.0 * 15.0 / 16.0 / 50.0).abs() < 1e-12);
    // A single GPU all-reduces nothing.
    assert_eq!(model_step(&cat.offers[2], 1, work, 0.5).1, 0.0);

    let r = req(1, 8, "h100", |c| {
        c.market = Market::OnDemand;
        c.max_nodes = 2;
    });
    let shapes = compare(&cat, &r, work).unwrap();
    // H100 offers only, 1 and 2 nodes each, cost per step ascending.
    assert_eq!(shapes.len(), 4);
    assert!(shapes
        .windows(2)
        .all(|w| w[0].usd_per_1000_steps <= w[1].usd_per_1000_steps));
    // One node of the cheaper offer wins: the network makes two nodes
    // dearer per step.
    assert_eq!(
        (shapes[0].instance_type.as_str(), shapes[0].nodes),
        ("efa8", 1)
    );
    // A replica of 3 x 20 GB fits the 80 GB H100s, not the 40 GB A100.
    let big = StepWork {
        tflop: 1.0,
        gradient_gb: 20.0,
    };
    let shapes = compare(&cat, &req(1, 1, "cuda", |c| c.max_nodes = 1), big).unwrap();
    assert!(shapes.iter().all(|s| s.gpu == "H100"), "{shapes:?}");
    let e = compare(&cat, &req(1, 1, "v100", |_| {}), work).unwrap_err();
    assert!(
        e.starts_with("no offer has 1 node(s) x any number of V100"),
        "{e}"
    );
}

#[test]
fn the_built_in_catalog_parses_and_covers_the_three_clouds() {
    let cat = parse_catalog(BUILT_IN, "configs/catalog.json").unwrap();
    for it in [
        "p5.48xlarge",
        "p4d.24xlarge",
        "g5.2xlarge",
        "g6e.4xlarge",
        "a3-highgpu-8g",
        "a2-highgpu-1g",
        "g2-standard-4",
        "Standard_ND96isr_H100_v5",
        "Standard_NC24ads_A100_v4",
    ] {
        let o = cat
            .offers
            .iter()
            .find(|o| o.instance_type == it)
            .unwrap_or_else(|| panic!("{it}"));
        assert!(o.sources.contains_key("on_demand"), "{it} names its source");
    }
    let bad = BUILT_IN.replace("\"<5%\"", "\"sometimes\"");
    let e = parse_catalog(&bad, "x").unwrap_err();
    assert!(
        e.contains("p5.48xlarge") && e.contains("spot_interruption"),
        "{e}"
    );
}

/// A Capacity Block as the catalog describes one: by the day to 14 days,
/// by the week to 182; 1, 2, 4, ..., 64 instances; 30 minutes lost at the
/// end; the whole term paid.
fn block(price: f64) -> ShortTerm {
    ShortTerm {
        kind: Buy::CapacityBlock,
        price_per_hour: price,
        durations: vec![
            DurationStep {
                up_to_hours: 336.0,
                step_hours: 24.0,
            },
            DurationStep {
                up_to_hours: 4368.0,
                step_hours: 168.0,
            },
        ],
        counts: vec![1, 2, 4, 8, 16, 32, 64],
        end_margin_hours: 0.5,
        billed: "term".into(),
        obtain: "bought ahead".into(),
        source: "test".into(),
        as_of: "2026-11".into(),
        estimated: false,
    }
}

#[test]
fn a_capacity_block_is_bought_under_its_rules() {
    let t = block(30.0);
    // (hours needed, the duration bought)
    for (need, got) in [
        (1.0, Some(24.0)),
        (24.0, Some(24.0)),
        (24.5, Some(48.0)),
        (336.0, Some(336.0)),
        (336.5, Some(504.0)),
        (4368.0, Some(4368.0)),
        (4368.5, None),
    ] {
        assert_eq!(t.duration_for(need), got, "{need} h");
    }
    // (nodes, the instances bought)
    for (nodes, got) in [
        (1, Some(1)),
        (3, Some(4)),
        (8, Some(8)),
        (33, Some(64)),
        (65, None),
    ] {
        assert_eq!(t.count_for(nodes), got, "{nodes} nodes");
    }

    let mut cat = catalog();
    cat.offers[1].short_term = vec![block(30.0)];
    // (nodes, expected hours, the pick's (instances, term hours, cost), or
    // the reason the block does not fit)
    type Want = Result<(u32, f64, f64), &'static str>;
    let table: &[(u32, f64, Want)] = &[
        // 47.5 h + the 30-minute margin: a 2-day block of 4 for 3 nodes.
        (3, 47.5, Ok((4, 48.0, 4.0 * 30.0 * 48.0))),
        // 48 h needs 48.5: 3 days.
        (2, 48.0, Ok((2, 72.0, 2.0 * 30.0 * 72.0))),
        // 20 days: past 14 days the weeks count: 21 days.
        (1, 480.0, Ok((1, 504.0, 30.0 * 504.0))),
        (
            2,
            5000.0,
            Err("a capacity-block is sold for at most 4368 h, the job needs 5000.5 h"),
        ),
        (
            65,
            10.0,
            Err("a capacity-block holds at most 64 instances, the job needs 65"),
        ),
    ];
    for (nodes, hours, want) in table {
        let r = rank(
            &cat,
            &req(*nodes, 8, "h100", |c| {
                c.market = Market::ShortTerm;
                c.expected_hours = *hours;
            }),
        );
        match want {
            Ok((count, term, cost)) => {
                let r = r.unwrap();
                let p = &r.candidates[0];
                assert_eq!(
                    (p.market, p.bought_nodes, p.term_hours),
                    (Buy::CapacityBlock, *count, Some(*term)),
                    "{nodes} x {hours} h"
                );
                assert!((p.expected_cost - cost).abs() < 1e-6, "{}", p.expected_cost);
                assert_eq!((p.expected_preemptions, p.expected_hours), (0.0, *hours));
                let text = human(&r);
                assert!(text.contains("not preempted (bought ahead)"), "{text}");
            }
            Err(why) => {
                let e = r.unwrap_err();
                assert!(e.contains(why), "{nodes} x {hours} h: {e}");
            }
        }
    }
    // Cheapest, 40 h: a 2-day block of 2 ($2,880) beats both offers' spot
    // ($3,600 and more, preemptions priced in) and on demand.
    let r = rank(
        &cat,
        &req(2, 8, "h100", |c| {
            c.market = Market::Cheapest;
            c.interconnect = "rdma".into();
            c.expected_hours = 40.0;
        }),
    )
    .unwrap();
    let order: Vec<Buy> = r.candidates.iter().map(|c| c.market).collect();
    assert_eq!(
        order[..3],
        [Buy::CapacityBlock, Buy::Spot, Buy::Spot],
        "{order:?}"
    );
}

#[test]
fn owned_capacity_comes_first_and_costs_nothing_extra() {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_209_952); // 2026-12-02 11:12 UTC
    let owned = |nodes: u32, until: Option<&str>| proto::spec::Owned {
        instance_type: "ib8".into(),
        region: None,
        nodes,
        id: Some("cr-1".into()),
        until: until.map(str::to_string),
    };
    let ask = |nodes: u32, o: proto::spec::Owned| {
        let mut r = req(nodes, 8, "h100", |c| {
            c.market = Market::OnDemand;
            c.expected_hours = 48.0;
            c.owned = vec![o];
        });
        r.now = now;
        rank(&catalog(), &r).unwrap()
    };
    // All nodes owned for the whole job: the pick, at no cost, although
    // efa8 on demand is cheaper per hour than ib8.
    let r = ask(2, owned(2, None));
    let p = &r.candidates[0];
    assert_eq!(
        (
            p.instance_type.as_str(),
            p.market,
            p.owned_nodes,
            p.expected_cost
        ),
        ("ib8", Buy::Owned, 2, 0.0)
    );
    assert!(
        r.reason
            .contains("all 2 node(s) in capacity you own (cr-1)"),
        "{}",
        r.reason
    );
    // Two of four owned: the other two bought on demand ($100/h each).
    let r = ask(4, owned(2, None));
    let p = &r.candidates[0];
    assert_eq!(
        (p.market_label().as_str(), p.owned_nodes, p.bought_nodes),
        ("owned+on-demand", 2, 2)
    );
    assert!((p.expected_cost - 2.0 * 100.0 * 48.0).abs() < 1e-6);
    assert!((p.price_per_hour - 200.0).abs() < 1e-9);
    // Owned until the end of 2026-12-02 (12.8 h of the 48): the owned
    // nodes are bought for the rest.
    let r = ask(2, owned(2, Some("2026-12-02")));
    let p = &r.candidates[0];
    let left = (1_796_255_999.0 - 1_796_209_952.0) / 3600.0;
    assert_eq!(
        (p.market, p.owned_nodes, p.owned_until.as_deref()),
        (Buy::OnDemand, 2, Some("2026-12-02"))
    );
    assert!(
        (p.expected_cost - 2.0 * 100.0 * (48.0 - left)).abs() < 1e-6,
        "{}",
        p.expected_cost
    );
    // A reservation that has ended is not capacity the job has.
    let r = ask(2, owned(2, Some("2026-11-30")));
    assert_eq!(
        (
            r.candidates[0].owned_nodes,
            r.candidates[0].instance_type.as_str()
        ),
        (0, "efa8")
    );
    // Owned capacity the catalog does not have is an error naming it.
    let mut r = req(1, 8, "h100", |c| {
        c.owned = vec![proto::spec::Owned {
            instance_type: "p9".into(),
            region: Some("r1".into()),
            nodes: 1,
            id: None,
            until: None,
        }]
    });
    r.now = now;
    let e = rank(&catalog(), &r).unwrap_err();
    assert_eq!(e, "capacity.owned[0]: no catalog offer is p9 in r1");
}

#[test]
fn spot_figures_come_with_the_bracket_s_range() {
    // efa8 "<5%" on 2 nodes for 730 h: 0..0.1 preemptions (midpoint 0.05);
    // each costs 15 min of work + 5 min of recovery.
    let r = rank(
        &catalog(),
        &req(2, 8, "h100", |c| {
            c.market = Market::Spot;
            c.interconnect = "rdma".into();
            c.expected_hours = 730.0;
        }),
    )
    .unwrap();
    let p = &r.candidates[0];
    let [lo, hi] = p.preemptions_range.unwrap();
    assert!(lo == 0.0 && (hi - 0.1).abs() < 1e-12 && (p.expected_preemptions - 0.05).abs() < 1e-12);
    let [clo, chi] = p.cost_range.unwrap();
    let per = 20.0 / 60.0;
    assert!((clo - 90.0 * 730.0).abs() < 1e-6 && (chi - 90.0 * (730.0 + 0.1 * per)).abs() < 1e-6);
    assert!(clo <= p.expected_cost && p.expected_cost <= chi);
    assert_eq!(bracket_range(">20%"), Some((0.20, 0.30)));
    let text = human(&r);
    assert!(
        text.contains("(preemptions 0.00-0.10, total $65700-$65703; bracket as of 2026-11)"),
        "{text}"
    );
}

#[test]
fn a_short_term_entry_is_checked_where_the_catalog_is_read() {
    let mut v: serde_json::Value = serde_json::from_str(BUILT_IN).unwrap();
    let st = &mut v["offers"][0]["short_term"][0];
    st["billed"] = "sometimes".into();
    st["counts"] = serde_json::json!([0, 2]);
    st["durations"] = serde_json::json!([{"up_to_hours": 48, "step_hours": 24}, {"up_to_hours": 24, "step_hours": 24}]);
    let e = parse_catalog(&v.to_string(), "x").unwrap_err();
    for want in [
        "x: offers[0] (p5.48xlarge): short_term[0]: billed must be term or used, got \"sometimes\"",
        "short_term[0]: counts must be >= 1",
        "short_term[0]: durations must have step_hours > 0 and growing up_to_hours",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
}
