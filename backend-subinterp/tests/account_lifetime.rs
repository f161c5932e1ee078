//! An account's ledger is freed by whichever goes last, the account or its last block: a
//! million accounts, each outlived by a block, leave nothing behind. A test binary of its own,
//! so that no other test's allocations move the resident size it reads.

use cell_backend_subinterp::{AccountingAllocator, memory};

#[global_allocator]
static ALLOCATOR: AccountingAllocator = AccountingAllocator;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn accounts_outlived_by_their_blocks_leave_nothing_behind() {
    let run = |n: usize| {
        for _ in 0..n {
            let account = memory::Account::new(0);
            let block = account.charge(|| Box::new([0u8; 64]));
            drop(account);
            drop(block);
        }
    };
    run(10_000); // the allocator's own caches settle
    let start = resident_bytes();
    run(1_000_000);
    let grown = resident_bytes().saturating_sub(start);
    // A leaked ledger would be at least 24 bytes each: 24 MB here.
    assert!(
        grown < 4 << 20,
        "a million accounts left {grown} bytes behind"
    );
}
