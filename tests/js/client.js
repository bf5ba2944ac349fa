// Calls mta the way an application using mailgun.js does, and prints what the SDK made of the
// answer as JSON (Dates as ISO strings; a date the SDK could not parse prints as null).
// Usage: node client.js <call> [json-args]  with MTA_URL, MTA_KEY and MTA_DOMAIN set.
'use strict';

const formData = require('form-data');
const Mailgun = require('mailgun.js');

const mg = new Mailgun(formData).client({
  username: 'api',
  key: process.env.MTA_KEY,
  url: process.env.MTA_URL,
});
const domain = process.env.MTA_DOMAIN;
const quiet = { warn() {} }; // the SDK warns that the v3 stats and tags calls are deprecated
mg.stats.logger = quiet;
mg.domains.domainTags.logger = quiet;

const calls = {
  domainStats: (query) => mg.stats.getDomain(domain, query),
  accountStats: (query) => mg.stats.getAccount(query),
  listTags: (query) => mg.domains.domainTags.list(domain, query),
  getTag: (tag) => mg.domains.domainTags.get(domain, tag),
  updateTag: ({ tag, description }) => mg.domains.domainTags.update(domain, tag, description),
  tagStats: ({ tag, query }) => mg.domains.domainTags.statistic(domain, tag, query),
  createList: (data) => mg.lists.create(data),
  getList: (address) => mg.lists.get(address),
  listLists: (query) => mg.lists.list(query),
  listListsByAddress: (query) => mg.lists.listByAddress(query),
  updateList: ({ address, data }) => mg.lists.update(address, data),
  destroyList: (address) => mg.lists.destroy(address),
  createMember: ({ list, data }) => mg.lists.members.createMember(list, data),
  createMembers: ({ list, data }) => mg.lists.members.createMembers(list, data),
  getMember: ({ list, address }) => mg.lists.members.getMember(list, address),
  updateMember: ({ list, address, data }) => mg.lists.members.updateMember(list, address, data),
  destroyMember: ({ list, address }) => mg.lists.members.destroyMember(list, address),
  listMembers: ({ list, query }) => mg.lists.members.listMembers(list, query),
  listMembersByAddress: ({ list, query }) => mg.lists.members.listMembersByAddress(list, query),
  uploadMembers: ({ list, csv, subscribed, upsert }) =>
    mg.lists.members.upload(list, csv, subscribed, upsert),
};

const [call, args] = process.argv.slice(2);
calls[call](args === undefined ? undefined : JSON.parse(args)).then(
  (result) => process.stdout.write(JSON.stringify(result)),
  (error) => {
    process.stderr.write(`${error.status || ''} ${error.message || error}\n`);
    process.exit(1);
  },
);
