//! shopctl: the operator's tool for service identities.
//!
//!   shopctl keys init DIR                       a private key per identity + DIR/trusted-keys
//!   shopctl token --aud item-service --keys DIR  a token (as the operator) for grpcurl:
//!     grpcurl -plaintext -H "x-shop-caller: $(shopctl token --aud item-service --keys DIR)" \
//!       127.0.0.1:50052 list

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use platform::{
    identity::{self, MAX_LIFETIME, UserAssertion, UserRole},
    keys::KeyDir,
    policy::ANY_SERVER,
};
use uuid::Uuid;

/// The audiences a token can name: each service's own, the card gateway's admin API, and
/// "shop" (the admin services every server hosts: FaultAdmin, Echo).
const AUDIENCES: [&str; 5] = [
    identity::USER_SERVICE,
    identity::ITEM_SERVICE,
    identity::PAYMENT_SERVICE,
    "card-gateway",
    ANY_SERVER,
];

#[derive(Parser)]
#[command(
    name = "shopctl",
    about = "Service identity keys and tokens for the Shop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Key directories.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints a service token (put it in the `x-shop-caller` header or metadata).
    Token {
        /// The identity that signs (its key is DIR/NAME.pem).
        #[arg(long = "as", default_value = identity::OPERATOR)]
        name: String,
        /// The service the token is for: user-service, item-service, payment-service,
        /// card-gateway (its /admin/* API) or shop (FaultAdmin and Echo on any server).
        #[arg(long)]
        aud: String,
        /// The key directory `shopctl keys init` made.
        #[arg(long, env = "SHOP_KEYS_DIR")]
        keys: PathBuf,
        /// How long the token lives (at most 3600 s, what servers accept).
        #[arg(long, default_value_t = MAX_LIFETIME.as_secs())]
        ttl_secs: u64,
        /// Acting for this end user (the `act` claim), e.g. to try a user-scoped RPC.
        #[arg(long)]
        user: Option<Uuid>,
        /// The end user is an admin (with --user).
        #[arg(long, requires = "user")]
        admin: bool,
        /// The one gRPC method (path, "/shop.item.v1.ItemService/GetItem") the token opens.
        /// Servers accept a token naming no method only from the operator (a grpcurl
        /// session); any other identity's token needs one.
        #[arg(long)]
        method: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Makes DIR/NAME.pem for every identity that has none (gateway, user-service,
    /// item-service, payment-service, operator) and writes DIR/trusted-keys from them.
    /// Existing keys are kept, so running it again is harmless.
    Init { dir: PathBuf },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shopctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys {
            command: KeysCommand::Init { dir },
        } => {
            let keys = KeyDir::new(&dir);
            let made = keys.init(&identity::IDENTITIES)?;
            for name in identity::IDENTITIES {
                let state = if made.iter().any(|m| m == name) {
                    "made"
                } else {
                    "kept"
                };
                eprintln!("{state:>5} {}", keys.key_file(name).display());
            }
            eprintln!("wrote {}", keys.trust_file().display());
            eprintln!(
                "each process: SHOP_IDENTITY_KEY_FILE=<its NAME.pem> SHOP_TRUSTED_KEYS_FILE={}",
                keys.trust_file().display()
            );
            use platform::card_keys::Kind;
            eprintln!(
                "card processor: CARD_GATEWAY_SECRET_KEY_FILE={} (card-gateway, payment-service), \
                 CARD_GATEWAY_PUBLISHABLE_KEY_FILE={} (card-gateway, gateway)",
                keys.card_key_file(Kind::Secret).display(),
                keys.card_key_file(Kind::Publishable).display()
            );
            Ok(())
        }
        Command::Token {
            name,
            aud,
            keys,
            ttl_secs,
            user,
            admin,
            method,
        } => {
            if !AUDIENCES.contains(&aud.as_str()) {
                anyhow::bail!("--aud {aud:?}: expected one of {}", AUDIENCES.join(", "));
            }
            let signer = KeyDir::new(keys).signer(&name)?;
            let user = user.map(|user_id| UserAssertion {
                user_id,
                role: if admin {
                    UserRole::Admin
                } else {
                    UserRole::Customer
                },
            });
            let ttl = Duration::from_secs(ttl_secs).min(MAX_LIFETIME);
            println!("{}", signer.mint_for(&aud, method.as_deref(), user, ttl)?);
            Ok(())
        }
    }
}
