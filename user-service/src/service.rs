//! The `shop.user.v1.UserService` implementation: parse at the edge, then domain calls.

use platform::{events::RelayWaker, identity::Caller, paging::Page, transport::GrpcTransport};
use shop_proto::{
    common::v1::PageResponse, item::v1::item_service_client::ItemServiceClient,
    payment::v1::payment_service_client::PaymentServiceClient, user::v1 as pb,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    access,
    app::UserService,
    async_checkout::AsyncCheckout,
    checkout_record::{Begun, NewCheckout, Transition},
    domain::{DisplayName, Email, Password, Role, UserId},
    error::Error,
    orders::{self, NewOrder, timestamp},
    password::{HashLimits, Hasher},
    store::{OrderRow, Store, UserRow},
    token::TokenKeys,
};

/// The services user-service calls: payment-service (the chained checkout, the recovery)
/// and item-service (the recovery).
#[derive(Clone)]
pub struct Downstreams {
    pub payment: GrpcTransport,
    pub item: GrpcTransport,
}

/// State shared by every request.
pub struct Users {
    pub(crate) store: Store,
    pub(crate) tokens: TokenKeys,
    pub(crate) payment: PaymentServiceClient<GrpcTransport>,
    /// For the checkout recovery.
    pub(crate) item: ItemServiceClient<GrpcTransport>,
    passwords: Hasher,
    /// Wakes the event relay after a commit that stored an event; None when no event
    /// stream is configured (the asynchronous checkout is then refused).
    pub(crate) relay: Option<RelayWaker>,
}

impl Users {
    pub fn new(store: Store, tokens: TokenKeys, deps: Downstreams) -> Self {
        Self {
            store,
            tokens,
            payment: PaymentServiceClient::new(deps.payment),
            item: ItemServiceClient::new(deps.item),
            passwords: Hasher::default(),
            relay: None,
        }
    }

    /// Enables the asynchronous checkout: its events are relayed by the task `relay` wakes.
    pub fn with_relay(mut self, relay: RelayWaker) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Bounds password hashing (default: one per CPU, see [`HashLimits`]).
    pub fn with_hash_limits(mut self, limits: HashLimits) -> Self {
        self.passwords = Hasher::new(limits);
        self
    }

    /// The user id and role in a valid token.
    pub(crate) fn authenticate(&self, token: &str) -> Result<(UserId, Role), Error> {
        let claims = self.tokens.verify(token).map_err(|e| {
            tracing::debug!(error = %platform::telemetry::chain(&e), "token rejected");
            Error::BadToken
        })?;
        Ok((UserId(claims.sub), claims.role))
    }
}

fn user_pb(u: UserRow) -> pb::User {
    pb::User {
        user_id: u.user_id.to_string(),
        email: u.email,
        display_name: u.display_name,
        role: Role::from_db(&u.role).to_pb() as i32,
        created_at: Some(timestamp(u.created_at)),
    }
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for UserService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        let email = Email::parse(&r.email).map_err(Error::from)?;
        let password = Password::parse(r.password).map_err(Error::from)?;
        let display_name = DisplayName::parse(&r.display_name).map_err(Error::from)?;
        // Every account starts as a customer; admins are made by the operator
        // (`user-service admin grant`), never by registering a particular address.
        let role = Role::Customer;
        // A taken email costs a lookup, not a hash; a registration racing this one is
        // still caught by the unique constraint on insert.
        if self
            .0
            .store
            .email_registered(&email)
            .await
            .map_err(Error::from)?
        {
            return Err(Error::EmailTaken.into());
        }
        let hash = self.0.passwords.hash(password).await.map_err(Error::from)?;
        let user = {
            use secrecy::ExposeSecret;
            self.0
                .store
                .insert_user(&email, &display_name, hash.expose_secret(), role)
                .await
                .map_err(Error::from)?
        };
        tracing::info!(user_id = %user.user_id, "user registered");
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user_pb(user)),
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = request.into_inner();
        // A malformed email cannot match an account: same answer as a wrong password.
        let Ok(email) = Email::parse(&r.email) else {
            return Err(Error::BadCredentials.into());
        };
        if r.password.len() > 4 * Password::MAX_CHARS {
            return Err(Error::BadCredentials.into());
        }
        let found = self
            .0
            .store
            .credentials(&email)
            .await
            .map_err(Error::from)?;
        let (user, hash) = match found {
            Some((u, h)) => (Some(u), Some(h)),
            None => (None, None),
        };
        let ok = self
            .0
            .passwords
            .verify(r.password, hash)
            .await
            .map_err(Error::from)?;
        let user = match (ok, user) {
            (true, Some(u)) => u,
            _ => return Err(Error::BadCredentials.into()),
        };
        let role = Role::from_db(&user.role);
        let (token, _) = self
            .0
            .tokens
            .issue(UserId(user.user_id), role)
            .map_err(Error::Token)?;
        Ok(Response::new(pb::LoginResponse {
            access_token: token,
            expires_in_seconds: i64::try_from(self.0.tokens.ttl().as_secs()).unwrap_or(i64::MAX),
            user: Some(user_pb(user)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let id = UserId::parse(&request.into_inner().user_id, "user_id").map_err(Error::from)?;
        access::acts_for(caller.as_ref(), id.0)?;
        let user = self
            .0
            .store
            .user(id)
            .await
            .map_err(Error::from)?
            .ok_or(Error::UserNotFound)?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_pb(user)),
        }))
    }

    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let token = request.into_inner().access_token;
        let claims = self.0.tokens.verify(&token).map_err(|_| Error::BadToken)?;
        Ok(Response::new(pb::ValidateTokenResponse {
            user_id: claims.sub.to_string(),
            role: claims.role.to_pb() as i32,
            expires_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(claims.exp).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        }))
    }

    async fn record_order(
        &self,
        request: Request<pb::RecordOrderRequest>,
    ) -> Result<Response<pb::RecordOrderResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let order = NewOrder::parse(request.into_inner().order).map_err(Error::from)?;
        access::acts_for(caller.as_ref(), order.user_id.0)?;
        let (row, created) = self.0.record(&order).await?;
        Ok(Response::new(pb::RecordOrderResponse {
            order: Some(row.into()),
            created,
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let r = request.into_inner();
        let order_id = Uuid::parse_str(r.order_id.trim())
            .map_err(|_| Error::from(platform::FieldError::new("order_id", "must be a UUID")))?;
        let user = UserId::parse(&r.user_id, "user_id").map_err(Error::from)?;
        access::reads_order_of(caller.as_ref(), user.0)?;
        let row = self
            .0
            .store
            .order(order_id, user)
            .await
            .map_err(Error::from)?
            .ok_or(Error::OrderNotFound)?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(row.into()),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let r = request.into_inner();
        let user = UserId::parse(&r.user_id, "user_id").map_err(Error::from)?;
        access::acts_for(caller.as_ref(), user.0)?;
        let page = Page::parse(r.page.as_ref()).map_err(Error::from)?;
        let after = page
            .token
            .as_deref()
            .map(orders::decode_cursor)
            .transpose()
            .map_err(Error::from)?;
        // One extra row tells whether another page exists.
        let mut rows = self
            .0
            .store
            .list_orders(user, after, page.size + 1)
            .await
            .map_err(Error::from)?;
        let more = rows.len() > page.size as usize;
        rows.truncate(page.size as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => orders::encode_cursor(last.created_at, last.order_id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: rows.into_iter().map(Into::into).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn begin_checkout(
        &self,
        request: Request<pb::BeginCheckoutRequest>,
    ) -> Result<Response<pb::BeginCheckoutResponse>, Status> {
        let ctx = platform::CallContext::from_request(&request);
        let caller = Caller::of(&request).cloned();
        let new =
            NewCheckout::parse(request.into_inner(), &ctx.trace.trace_id).map_err(Error::from)?;
        access::acts_for(caller.as_ref(), new.user_id.0)?;
        let begun = self.0.begin(&new).await?;
        let (row, token, created) = match begun {
            Begun::Created(row, token) => (row, token.to_string(), true),
            Begun::Held(row, token) => (row, token.to_string(), false),
            Begun::Existing(row) => (row, String::new(), false),
        };
        Ok(Response::new(pb::BeginCheckoutResponse {
            order: Some(row.into()),
            lease_token: token,
            created,
        }))
    }

    async fn request_checkout(
        &self,
        request: Request<pb::RequestCheckoutRequest>,
    ) -> Result<Response<pb::RequestCheckoutResponse>, Status> {
        let ctx = platform::CallContext::from_request(&request);
        let caller = Caller::of(&request).cloned();
        let checkout = AsyncCheckout::parse(request.into_inner()).map_err(Error::from)?;
        access::acts_for(caller.as_ref(), checkout.user_id.0)?;
        let Some(relay) = &self.0.relay else {
            return Err(Error::NoEventStream.into());
        };
        let (row, created) = self
            .0
            .store
            .request_checkout(
                &checkout,
                &ctx.trace.trace_id,
                Some(ctx.trace.traceparent()),
            )
            .await
            .map_err(Error::from)?;
        if created {
            relay.wake();
            tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, strategy = "async", "checkout requested");
        }
        Ok(Response::new(pb::RequestCheckoutResponse {
            order: Some(row.into()),
            created,
        }))
    }

    async fn advance_checkout(
        &self,
        request: Request<pb::AdvanceCheckoutRequest>,
    ) -> Result<Response<pb::AdvanceCheckoutResponse>, Status> {
        let caller = Caller::of(&request).cloned();
        let t = Transition::parse(request.into_inner()).map_err(Error::from)?;
        // The record must be the asserted user's (the lease token alone is not enough).
        let owner = self
            .0
            .store
            .order_owner(t.order_id)
            .await
            .map_err(Error::from)?;
        access::acts_for(caller.as_ref(), owner.unwrap_or_default())?;
        let row = self.0.advance(&t).await?;
        Ok(Response::new(pb::AdvanceCheckoutResponse {
            order: Some(row.into()),
        }))
    }

    async fn chained_checkout(
        &self,
        request: Request<pb::ChainedCheckoutRequest>,
    ) -> Result<Response<pb::ChainedCheckoutResponse>, Status> {
        let ctx = platform::CallContext::from_request(&request);
        let asserted = Caller::of(&request).and_then(|c| c.user);
        let out = crate::chained::checkout(&self.0, &ctx, asserted, request.into_inner()).await?;
        Ok(Response::new(out))
    }
}

impl Users {
    /// Creates or resumes a checkout record (BeginCheckout, and the chained hop).
    pub(crate) async fn begin(&self, new: &NewCheckout) -> Result<Begun, Error> {
        let begun = self.store.begin_checkout(new).await?;
        match &begun {
            Begun::Created(row, _) => {
                tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, strategy = %row.strategy, "checkout begun");
            }
            Begun::Held(_, _) | Begun::Existing(_) => {}
        }
        Ok(begun)
    }

    /// Moves a checkout record on (AdvanceCheckout, the chained hop, the recovery).
    pub(crate) async fn advance(&self, t: &Transition) -> Result<OrderRow, Error> {
        let row = self.store.advance_checkout(t).await?;
        tracing::info!(order_id = %row.order_id, trace_id = %row.trace_id, status = %row.status, failure = row.failure.as_deref().unwrap_or(""), "checkout moved on");
        Ok(row)
    }

    /// Records an order idempotently; a retry returns the stored order unchanged, but an
    /// order id already used by another user is refused.
    pub(crate) async fn record(
        &self,
        order: &NewOrder,
    ) -> Result<(crate::store::OrderRow, bool), Error> {
        let (row, created) = self.store.insert_order(order).await?;
        if row.user_id != order.user_id.0 {
            return Err(Error::OrderIdTaken);
        }
        if created {
            tracing::info!(order_id = %row.order_id, "order recorded");
        }
        Ok((row, created))
    }
}
